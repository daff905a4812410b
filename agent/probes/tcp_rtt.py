"""tcp_rtt: smoothed RTT (microseconds) per local address, from tcp:tcp_probe."""

from __future__ import annotations

import time
from collections import defaultdict

from agent.model import ProbeSnapshot
from agent.probes.base import (BccProbe, ProbeUnsupported, address_rows,
                               hist_from_slots, render_addr)
from agent.stats.histogram import SlotLayout

# srtt values up to 2**27 us (134 s, above TCP's 120 s RTO ceiling) get their own slot
RTT_VALUE_BITS = 27


class TcpRttProbe(BccProbe):
    name = "tcp_rtt"
    source = "tcp_rtt.bpf.c"
    required = ("tcp:tcp_probe",)
    unit = "us"
    contract = {"rtt_rows": (4, 16), "addr_row_of": (16, 4), "addr_row_owner": (4, 16),
                "addr_cache": (4, 24), "rtt_hist": (20, 16), "rtt_lost": (4, 8)}

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
            "ADDR_ROWS": self.config.fast_addresses,
            "ADDR_SPILL_ADDRS": self.config.max_addresses,
        }

    @property
    def max_entries(self) -> int:
        # spilled addresses (no free row): a few dozen slots each in practice; 64 is generous
        return self.config.max_addresses * 64

    def expected_entries(self):
        rows = self.config.fast_addresses
        return {"rtt_rows": rows * self.layout.slots, "addr_row_of": rows + self.config.max_addresses,
                "addr_row_owner": rows, "rtt_hist": self.max_entries}

    def snapshot(self, bpf) -> ProbeSnapshot:
        layout = self.layout
        rows = self.mapped(bpf, "rtt_rows")
        per_addr: dict[str, dict[int, tuple[int, int]]] = defaultdict(dict)
        for row, addr in address_rows(bpf).items():
            words = rows.words(row * layout.slots, layout.slots)  # count, sum, count, ...
            slots = per_addr[addr]
            for slot, count in enumerate(words[0::2]):
                if count:
                    slots[slot] = (count, words[2 * slot + 1])
        for k, v in bpf[b"rtt_hist"].items():
            slots = per_addr[render_addr(bytes(k.addr))]
            c, t = slots.get(int(k.slot), (0, 0))
            slots[int(k.slot)] = (c + int(v.count), t + int(v.sum))
        return ProbeSnapshot(
            probe=self.name,
            unit=self.unit,
            taken_at=time.monotonic(),
            hists={a: hist_from_slots(layout, s) for a, s in per_addr.items()},
            lost=self.lost(bpf, "rtt_lost"),
        )
