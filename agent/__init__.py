"""ebpf-edge-agent: node network and scheduling signals from the running kernel."""

__version__ = "0.1.0"
