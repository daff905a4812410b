"""Reading a running agent over HTTP: its base URL, ``/report``, ``/metrics``, ``/readyz``.

Errors are :class:`AgentUnreachable` with a message that names the URL and what went wrong, so
every tool can print one line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping

from prometheus_client.parser import text_string_to_metric_families

DEFAULT_TIMEOUT = 5.0


class AgentUnreachable(Exception):
    """The agent could not be read (connection refused, timeout, bad answer)."""


def base_url(listen: str) -> str:
    """The URL a tool on the same node uses for the agent listening on ``listen`` (HOST:PORT):
    a wildcard address (0.0.0.0, ::, empty) is reached on loopback."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def normalize_url(url: str) -> str:
    """``--url`` as given: a bare HOST:PORT gets ``http://``; a trailing slash is dropped."""
    url = url.strip()
    if not url:
        raise ValueError("--url is empty")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r}: only http:// and https:// are understood")
    return url.rstrip("/")


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def get(url: str, timeout: float = DEFAULT_TIMEOUT) -> Answer:
    """GET ``url``; any HTTP status is an Answer, anything else AgentUnreachable."""
    req = urllib.request.Request(url, headers={"User-Agent": "ebpf-edge-agent-tools"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Answer(r.status, r.read())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.read())
    except urllib.error.URLError as e:
        raise AgentUnreachable(f"{url}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, bad URLs
        raise AgentUnreachable(f"{url}: {e}") from None


def parse_report(body: bytes, url: str = "/report") -> dict[str, Any]:
    """The /report document; ValueError quoting the start of a body that is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{url}: not JSON: {body[:120]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pods", []), list):
        raise ValueError(f"{url}: not a node report: {body[:120]!r}")
    return doc


def fetch_report(base: str, timeout: float = DEFAULT_TIMEOUT) -> dict[str, Any] | None:
    """The latest report; None while the agent has none yet (503)."""
    a = get(base + "/report", timeout)
    if a.status == 503:
        return None
    if a.status != 200:
        raise AgentUnreachable(f"{base}/report: HTTP {a.status}: {a.body[:200]!r}")
    try:
        return parse_report(a.body, base + "/report")
    except ValueError as e:
        raise AgentUnreachable(str(e)) from None


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    """Every sample of a Prometheus text exposition (counters keep their ``_total`` name)."""
    out = []
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out.append(Sample(s.name, dict(s.labels), float(s.value)))
    except ValueError as e:
        raise ValueError(f"/metrics: not the Prometheus text format: {e}") from None
    return out


def fetch_metrics(base: str, timeout: float = DEFAULT_TIMEOUT) -> list[Sample]:
    a = get(base + "/metrics", timeout)
    if a.status != 200:
        raise AgentUnreachable(f"{base}/metrics: HTTP {a.status}")
    try:
        return parse_metrics(a.body.decode("utf-8", "replace"))
    except ValueError as e:
        raise AgentUnreachable(f"{base}{e}") from None
