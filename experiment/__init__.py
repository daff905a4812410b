"""The seed's experiment (issue 19): does the node score track what a workload on the node
feels, and would placing pods by it help? ``make experiment``; see docs/experiment.md.

``experiment.relay`` (the TUN delay relay) and ``experiment.lab`` (a two-namespace lab joined
only through it) are reusable by other real-kernel tests."""
