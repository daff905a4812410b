"""Kernel-facing probes: one module per probe (its spec and its reader), one registry.
Only probes/base.py imports bcc (lazily, when a probe starts)."""

from agent.probes.base import BccProbe, Probe, ProbeError, ProbeUnsupported

__all__ = ["BccProbe", "Probe", "ProbeError", "ProbeUnsupported"]
