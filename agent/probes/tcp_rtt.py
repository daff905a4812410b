"""tcp_rtt: smoothed RTT (microseconds) per local address, from tcp:tcp_probe."""

from __future__ import annotations

import ctypes
import sys
import time
from collections import defaultdict

from agent.model import Histogram, ProbeSnapshot
from agent.probes.base import (ADDR_ROW_CONTRACT, BccProbe, ProbeUnsupported, address_row_defines,
                               address_row_entries, address_rows, render_addr)
from agent.stats.histogram import SlotLayout

# srtt values up to 2**27 us (134 s, above TCP's 120 s RTO ceiling) get their own slot
RTT_VALUE_BITS = 27


class TcpRttProbe(BccProbe):
    name = "tcp_rtt"
    source = "tcp_rtt.bpf.c"
    required = ("tcp:tcp_probe",)
    unit = "us"
    contract = {"rtt_rows": (4, 8), "rtt_row_sum": (4, 8), "rtt_hist": (20, 16), "rtt_lost": (4, 8),
                **ADDR_ROW_CONTRACT}

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
        saddr = self.kernel.tracepoint("tcp:tcp_probe").fields["saddr"]
        # word loads of the address (bpf/tcp_rtt.bpf.c) need alignment and little-endian words
        aligned = saddr.offset % 8 == 0 and sys.byteorder == "little"
        return {
            "HIST_SUB_BITS": self.layout.sub_bits,
            "HIST_MAX_SHIFT": self.layout.max_shift,
            "RTT_MAX_ENTRIES": self.max_entries,
            **address_row_defines(self.config),
            **({"SADDR_ALIGNED": 1} if aligned else {}),
        }

    @property
    def max_entries(self) -> int:
        # spilled addresses (no free row): a few dozen slots each in practice; 64 is generous
        return self.config.max_addresses * 64

    def expected_entries(self):
        return {"rtt_rows": self.config.fast_addresses * self.layout.slots,
                "rtt_hist": self.max_entries, **address_row_entries(self.config)}

    def snapshot(self, bpf) -> ProbeSnapshot:
        layout = self.layout
        rows, row_sum = self.mapped(bpf, "rtt_rows"), bpf[b"rtt_row_sum"]
        counts: dict[str, dict[int, int]] = defaultdict(dict)
        totals: dict[str, int] = defaultdict(int)
        for row, addr in address_rows(bpf).items():
            slots = counts[addr]
            for slot, n in enumerate(rows.words(row * layout.slots, layout.slots)):
                if n:
                    slots[slot] = n
            totals[addr] += self.percpu_sum(row_sum[ctypes.c_int(row)])
        for k, v in bpf[b"rtt_hist"].items():
            addr, slot = render_addr(bytes(k.addr)), int(k.slot)
            if v.count:
                counts[addr][slot] = counts[addr].get(slot, 0) + int(v.count)
            totals[addr] += int(v.sum)
        return ProbeSnapshot(
            probe=self.name,
            unit=self.unit,
            taken_at=time.monotonic(),
            hists={a: Histogram(layout, c, totals[a]) for a, c in counts.items()},
            lost=self.lost(bpf, "rtt_lost"),
        )
