"""Kernel-facing probes. Only probes/base.py imports bcc."""

from agent.probes.base import BccProbe, ProbeUnsupported, Probe
from agent.probes.runqlat import RunqlatProbe
from agent.probes.skb_drop import SkbDropProbe
from agent.probes.tcp_retrans import TcpRetransProbe
from agent.probes.tcp_rtt import TcpRttProbe

PROBE_CLASSES = {
    cls.name: cls for cls in (TcpRttProbe, TcpRetransProbe, SkbDropProbe, RunqlatProbe)
}

__all__ = ["BccProbe", "Probe", "ProbeUnsupported", "PROBE_CLASSES"]
