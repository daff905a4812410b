"""tcp_rtt: smoothed RTT (microseconds) per local address, from tcp:tcp_probe."""

from __future__ import annotations

import time
from collections import defaultdict

from agent.model import ProbeSnapshot
from agent.probes.base import BccProbe, ProbeUnsupported, hist_from_slots, render_addr
from agent.stats.histogram import SlotLayout

# srtt values up to 2**27 us (134 s, above TCP's 120 s RTO ceiling) get their own slot
RTT_VALUE_BITS = 27


class TcpRttProbe(BccProbe):
    name = "tcp_rtt"
    source = "tcp_rtt.bpf.c"
    required = ("tcp:tcp_probe",)
    unit = "us"
    contract = {"rtt_hist": (20, 16), "rtt_lost": (4, 8)}

    @property
    def layout(self) -> SlotLayout:
        sub = self.config.hist_sub_bits
        return SlotLayout(sub, RTT_VALUE_BITS - sub - 1)

    def check_supported(self) -> None:
        super().check_supported()
        fmt = self.kernel.tracepoint("tcp:tcp_probe")
        for f in ("saddr", "srtt", "snd_nxt", "snd_una"):
            if not fmt.has(f):
                raise ProbeUnsupported(f"tcp:tcp_probe has no {f!r} field on this kernel")
        if fmt.fields["saddr"].size < 28:
            raise ProbeUnsupported("tcp:tcp_probe saddr is not a sockaddr_in6-sized buffer")

    def defines(self) -> dict:
        return {
            "HIST_SUB_BITS": self.layout.sub_bits,
            "HIST_MAX_SHIFT": self.layout.max_shift,
            "RTT_MAX_ENTRIES": self.max_entries,
        }

    @property
    def max_entries(self) -> int:
        # each address uses a few dozen slots at most in practice; 64 per address is generous
        return self.config.max_addresses * 64

    def expected_entries(self):
        return {"rtt_hist": self.max_entries}

    def snapshot(self, bpf) -> ProbeSnapshot:
        per_addr: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        for k, v in bpf[b"rtt_hist"].items():
            per_addr[render_addr(bytes(k.addr))][int(k.slot)] = (int(v.count), int(v.sum))
        layout = self.layout
        return ProbeSnapshot(
            probe=self.name,
            unit=self.unit,
            taken_at=time.monotonic(),
            hists={a: hist_from_slots(layout, s) for a, s in per_addr.items()},
            lost=self.lost(bpf, "rtt_lost"),
        )
