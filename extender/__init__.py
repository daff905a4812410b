"""ebpf-edge-extender: the reference kube-scheduler extender that consumes the agent's push.

A second program of this repository (STYLE.md): it shares with the agent only the payload
contract (``schemas/node-report.schema.json``), never the agent's probes, sampler or readers.
Layers, top down: ``cli`` | ``server`` | ``app`` | ``store``, ``wire``, ``policies``,
``filtering``, ``validate`` | ``config``. docs/extender.md has the contract and the API.
"""

from agent import __version__  # one version for the repository's two programs

__all__ = ["__version__"]
