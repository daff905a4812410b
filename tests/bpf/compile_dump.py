"""Compile one probe the way the compiling child does and print a digest of each program's
instructions, for tests/bpf/test_compile_child.py's comparison of header trees:

    python tests/bpf/compile_dump.py PROBE kernel|probe

``kernel``: against the kernel header tree the detection chose, as root (BCC reads
/proc/kallsyms); ``probe``: against bpf/probe-headers with the child's effective uid dropped
(compile_child._skip_kallsyms). Map descriptors in the instructions (ld_imm64 of a map, whose
number depends on the process) are zeroed before hashing. Prints one JSON line.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agent.config import Config  # noqa: E402
from agent.probes import compile_child, registry  # noqa: E402

_LD_IMM64 = 0x18


def digest(insns: bytes) -> str:
    out = bytearray(insns)
    for i in range(0, len(out) - 15, 8):
        if out[i] == _LD_IMM64 and (out[i + 1] >> 4) in (1, 2, 5, 6):  # pseudo map fd / value / idx
            out[i + 4:i + 8] = b"\0\0\0\0"
    return hashlib.sha256(bytes(out)).hexdigest()


def main() -> None:
    name, mode = sys.argv[1], sys.argv[2]
    config = Config(probes=(name,))
    kernel = registry.detect_kernel(config)
    probe = registry.build(config, kernel)[0]
    req = probe.compile_request().message()
    trees = req["trees"]
    if mode == "probe":
        skipped = compile_child._skip_kallsyms()
        req["trees"] = [t for t in trees if t["label"] == "probe-headers"]
    else:
        skipped = "not tried"
        req["trees"] = [t for t in trees if t["label"].startswith("kernel")]
    bpf, _, tree = compile_child._compile(req)
    progs = {(f.decode() if isinstance(f, bytes) else f): digest(bpf.dump_func(f))
             for f in list(bpf.funcs)}
    print(json.dumps({"tree": tree, "euid": os.geteuid(), "skip_kallsyms": skipped or "done",
                      "progs": progs}), flush=True)
    os._exit(0)  # as the child: BCC's cleanup is not needed here


if __name__ == "__main__":
    main()
