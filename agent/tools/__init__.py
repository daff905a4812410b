"""Operator tools that read a running agent (status, top, record) or a cgroup (measure).

Each command is its own module with a pure core (tested without a kernel or an agent) and a
thin edge that does the IO. They read the agent only through its HTTP contract: ``/report``
(schemas/node-report.schema.json), ``/metrics`` (the exporter's series names) and ``/readyz``;
none loads a probe.
"""
