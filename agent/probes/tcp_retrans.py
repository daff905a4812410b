"""tcp_retrans: retransmitted skbs per local address, from tcp:tcp_retransmit_skb."""

from __future__ import annotations

import ctypes
import time

from agent.model import ProbeSnapshot
from agent.probes.base import (ADDR_ROW_CONTRACT, BccProbe, ProbeUnsupported, address_row_defines,
                               address_row_entries, address_rows, render_addr)


class TcpRetransProbe(BccProbe):
    name = "tcp_retrans"
    source = "tcp_retrans.bpf.c"
    required = ("tcp:tcp_retransmit_skb",)
    unit = ""
    contract = {"retrans_rows": (4, 8), "retrans_by_addr": (16, 8), "retrans_lost": (4, 8),
                **ADDR_ROW_CONTRACT}

    def check_supported(self) -> None:
        super().check_supported()
        fmt = self.kernel.tracepoint("tcp:tcp_retransmit_skb")
        if not fmt.has("saddr_v6"):
            raise ProbeUnsupported("tcp:tcp_retransmit_skb has no saddr_v6 field on this kernel")

    def defines(self) -> dict:
        return {"RETRANS_MAX_ENTRIES": self.config.max_addresses,
                "HIST_SUB_BITS": 5, "HIST_MAX_SHIFT": 0, **address_row_defines(self.config)}

    def expected_entries(self):
        return {"retrans_rows": self.config.fast_addresses,
                "retrans_by_addr": self.config.max_addresses, **address_row_entries(self.config)}

    def snapshot(self, bpf) -> ProbeSnapshot:
        rows = bpf[b"retrans_rows"]
        counts: dict[str, int] = {}
        for row, addr in address_rows(bpf).items():
            counts[addr] = counts.get(addr, 0) + self.percpu_sum(rows[ctypes.c_int(row)])
        for k, v in bpf[b"retrans_by_addr"].items():
            addr = render_addr(bytes(k.addr))
            counts[addr] = counts.get(addr, 0) + int(v.value)
        return ProbeSnapshot(self.name, self.unit, time.monotonic(), counts=counts,
                             lost=self.lost(bpf, "retrans_lost"))
