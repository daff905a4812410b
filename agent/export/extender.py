"""Push reports to the scheduler extender: ``POST <url>/metrics/report``.

A one-slot mailbox fed with every new report (latest wins: a newer report replaces an
undelivered one, nothing queues), delivered at most once per ``interval``, from its own thread,
a timeout per attempt, an optional bearer token re-read from a file on every attempt
(rotation), TLS verification on by default. A slow or broken extender only ever delays this
thread.

What an answer means (push contract v2, docs/deploy.md):

- 2xx with ``{"status": "accepted"}``: delivered; ``{"status": "stale"}``: the extender already
  has a newer report of ours, counted and not retried; any other 2xx body: ``invalid_response``,
  retried.
- 400, 401, 403, 413: the extender refuses this report as it is; retrying it cannot help. Counted
  by cause, logged once per cause with the extender's message; the next report is tried at the
  next interval.
- 429, 5xx, other 4xx, timeouts, connection and TLS errors: retried with exponential backoff and
  jitter (a newer report replaces the one being retried).

:class:`PushGroup` pushes to several endpoints: every URL of ``extender_url``, and every address
a URL's host name resolves to (a headless Service: every scheduler replica), re-resolved each
push interval. Each endpoint has its own pusher (mailbox, backoff, series), so one slow replica
never delays another. An address of a name is reached by IP while TLS is verified against the
name.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import random
import socket
import threading
import time
from typing import Any, Callable, Iterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from requests.adapters import HTTPAdapter

from agent.retry import Backoff, RateLimitedLog

log = logging.getLogger(__name__)

# answers that refuse this report for good (retrying the same body cannot help)
REJECTED = {400: "http_400", 401: "http_401", 403: "http_403", 413: "http_413"}
CAUSES = ("timeout", "connection", "tls", *REJECTED.values(), "http_429", "http_4xx",
          "http_5xx", "http_other", "invalid_response", "token", "other")

DELIVERED, STALE, REJECT, RETRY = "delivered", "stale", "rejected", "retry"


def classify(exc: BaseException | None, status: int | None = None) -> str:
    if exc is None:
        if status is None:
            return "other"
        if status in REJECTED:
            return REJECTED[status]
        if status == 429:
            return "http_429"
        if 400 <= status < 500:
            return "http_4xx"
        if 500 <= status < 600:
            return "http_5xx"
        return "http_other"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls"
    if isinstance(exc, (requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError,
                        requests.exceptions.InvalidHeader)):
        return "invalid_response"
    if isinstance(exc, requests.exceptions.ConnectionError):
        text = repr(exc)
        if "BadStatusLine" in text or "RemoteDisconnected" in text or "LineTooLong" in text:
            return "invalid_response"
        return "connection"
    return "other"


class _PinnedName(HTTPAdapter):
    """Connects to an address but speaks TLS to (SNI) and verifies the certificate for the name."""

    def __init__(self, hostname: str, **kw) -> None:
        self._hostname = hostname
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["server_hostname"] = self._hostname
        kw["assert_hostname"] = self._hostname
        super().init_poolmanager(*args, **kw)


def _with_address(url: str, address: str) -> str:
    u = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = host + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


class Pusher:
    """One endpoint. ``address``: reach ``url``'s host at this IP (Host header, SNI and the
    certificate check stay the host name's)."""

    def __init__(self, url: str, timeout: float, *, interval: float = 0.0,
                 token_file: str = "", ca_file: str = "",
                 verify: bool = True, backoff_first: float = 1.0, backoff_max: float = 30.0,
                 wall: Callable[[], float] = time.time, address: str = "") -> None:
        self.url = url.rstrip("/")
        self.address = address
        self.endpoint = self.url + "/metrics/report"
        self._target = _with_address(self.endpoint, address) if address else self.endpoint
        self._host_header = urlsplit(self.endpoint).netloc if address else None
        self.timeout = timeout
        self.interval = interval
        self.token_file = token_file
        self.verify: bool | str = (ca_file or True) if verify else False
        self.backoff_first = backoff_first
        self.backoff_max = backoff_max
        self._wall = wall
        self._cv = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._pending_failed = False  # the pending report already failed at least once
        self._next_send = 0.0  # monotonic time before which no new delivery starts
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)
        self._session = requests.Session()
        if address and urlsplit(url).scheme == "https":
            self._session.mount("https://", _PinnedName(urlsplit(url).hostname))
        # metrics
        self.attempts = 0
        self.failures = {c: 0 for c in CAUSES}
        self.replaced = 0  # undelivered (failed) reports superseded by a newer one
        self.delivered = 0
        self.stale = 0  # answered "stale": the extender has a newer report of ours
        self.rejected = 0  # reports dropped after a 400/401/403/413
        self._rejections_log = RateLimitedLog(math.inf, log)  # once per cause
        self.last_success: float | None = None
        self.last_delivered_sequence: int | None = None
        self.last_error = ""
        if not verify:
            log.warning("extender TLS verification is OFF (extender_tls_verify: false)")

    # -- mailbox -------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def offer(self, payload: dict[str, Any]) -> None:
        """Hand over the newest report; replaces any report still waiting."""
        with self._cv:
            if self._pending is not None and self._pending_failed:
                self.replaced += 1
            self._pending = payload
            self._cv.notify()

    def request_stop(self) -> None:
        """Tell the thread to end (at once, also mid-backoff); :meth:`stop` also waits for it."""
        with self._cv:
            self._stop = True
            self._cv.notify()

    def stop(self, timeout: float = 2.0) -> None:
        self.request_stop()
        self._session.close()
        self._thread.join(timeout)

    @property
    def pending(self) -> bool:
        with self._cv:
            return self._pending is not None

    # -- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = Backoff(self.backoff_first, max(self.backoff_first, self.backoff_max), random.random)
        while True:
            with self._cv:
                while not self._stop:
                    wait = self._next_send - time.monotonic()
                    if self._pending is not None and wait <= 0:
                        break
                    self._cv.wait(timeout=wait if wait > 0 else None)
                if self._stop:
                    return
                payload = self._pending
            outcome = self._attempt(payload)
            with self._cv:
                if outcome != RETRY:  # done with this report, whatever the extender made of it
                    if self._pending is payload:
                        self._pending = None
                    self._pending_failed = False
                    self._next_send = time.monotonic() + self.interval
                    backoff.reset()
                    continue
                self._pending_failed = True
                # back off, but wake at once for stop; a newer report is sent after the wait
                wait = backoff.next()
                self._cv.wait_for(lambda: self._stop, timeout=wait)
                if self._stop:
                    return

    def _attempt(self, payload: dict[str, Any]) -> str:
        self.attempts += 1
        headers = {"Content-Type": "application/json"}
        if self._host_header:
            headers["Host"] = self._host_header
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    headers["Authorization"] = "Bearer " + f.read().strip()
            except OSError as e:
                return self._fail("token", f"cannot read token file {self.token_file}: {e}")
        try:
            resp = self._session.post(self._target, data=json.dumps(payload), headers=headers,
                                      timeout=(self.timeout, self.timeout), verify=self.verify)
            status = resp.status_code
            body = resp.content[:4096]
            resp.close()
        except requests.exceptions.RequestException as e:
            return self._fail(classify(e), f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - the pusher thread must outlive any surprise
            return self._fail("other", f"{type(e).__name__}: {e}")
        if 200 <= status < 300:
            answer = _status_of(body)
            if answer not in ("accepted", "stale"):
                return self._fail("invalid_response",
                                  f"HTTP {status} without a JSON body {{\"status\": \"accepted\" | "
                                  f"\"stale\"}}: {_excerpt(body)}")
            if answer == "stale":
                self.stale += 1
            else:
                self.delivered += 1
                self.last_success = self._wall()
                self.last_delivered_sequence = payload.get("sequence")
            if self.last_error:
                log.info("push to %s recovered", self.label)
            self.last_error = ""
            return DELIVERED if answer == "accepted" else STALE
        cause = classify(None, status)
        if status in REJECTED:
            self.failures[cause] += 1
            self.rejected += 1
            # once per cause: it will not change soon
            self._rejections_log.log(logging.ERROR, cause, "push to %s refused (HTTP %d): %s; this "
                                     "report is dropped, the next is sent at the next interval "
                                     "(logged once per status)", self.label, status, _excerpt(body))
            return REJECT
        return self._fail(cause, f"HTTP {status}: {_excerpt(body)}")

    @property
    def label(self) -> str:
        return f"{self.endpoint} ({self.address})" if self.address else self.endpoint

    def _fail(self, cause: str, detail: str) -> str:
        self.failures[cause] += 1
        if self._stop:  # an attempt that was in flight when the agent stopped: not news
            log.debug("push to %s ended after stop (%s): %s", self.label, cause, detail)
        elif detail != self.last_error:  # log changes, not every retry
            log.warning("push to %s failed (%s): %s", self.label, cause, detail)
        self.last_error = detail
        return RETRY

    # -- metrics -------------------------------------------------------------------------------------
    def metrics(self) -> Iterator[Metric]:
        return iter(push_metrics([self]))


def _status_of(body: bytes) -> str | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    return doc.get("status") if isinstance(doc, dict) else None


def _excerpt(body: bytes, limit: int = 300) -> str:
    text = body.decode("utf-8", "replace").strip()
    return (text[:limit] + "...") if len(text) > limit else (text or "(empty body)")


def push_metrics(pushers: Sequence[Pusher]) -> list[Metric]:
    """One family per series name, a sample per endpoint (``endpoint``: the URL, ``address``:
    the IP it was reached at, "" when the URL's own host was used)."""
    lab = ["endpoint", "address"]
    a = CounterMetricFamily("ebpf_push_attempts", "Push attempts to the scheduler extender", labels=lab)
    f = CounterMetricFamily("ebpf_push_failures", "Failed push attempts by cause (http_400/401/403/413: "
                            "the report was refused and dropped; the others are retried)",
                            labels=lab + ["cause"])
    d = CounterMetricFamily("ebpf_push_delivered", "Reports the extender accepted", labels=lab)
    st = CounterMetricFamily("ebpf_push_stale", "Reports the extender answered stale (it has a newer one)",
                             labels=lab)
    r = CounterMetricFamily("ebpf_push_replaced",
                            "Undelivered reports replaced by a newer one (latest wins)", labels=lab)
    p = GaugeMetricFamily("ebpf_push_pending", "1 while a report waits for delivery", labels=lab)
    ls = GaugeMetricFamily("ebpf_push_last_success_timestamp_seconds",
                           "Unix time of the last accepted push", labels=lab)
    for x in pushers:
        lv = [x.endpoint, x.address]
        a.add_metric(lv, x.attempts)
        for c, n in x.failures.items():
            f.add_metric(lv + [c], n)
        d.add_metric(lv, x.delivered)
        st.add_metric(lv, x.stale)
        r.add_metric(lv, x.replaced)
        p.add_metric(lv, 1 if x.pending else 0)
        if x.last_success is not None:
            ls.add_metric(lv, x.last_success)
    return [m for m in (a, f, d, st, r, p, ls) if m.samples or m is not ls]


def resolve_addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (sorted, unique)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({i[4][0] for i in infos})


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class PushGroup:
    """A pusher per endpoint: per URL, and per address of a URL whose host is a name. The
    addresses are resolved again every ``interval`` on the group's own thread (never on the
    sampling thread that calls :meth:`offer`)."""

    def __init__(self, urls: Sequence[str], timeout: float, *, interval: float,
                 resolve: Callable[[str, int], list[str]] = resolve_addresses,
                 resolve_every: float | None = None, **pusher_kw) -> None:
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout = timeout
        self.interval = interval
        self.resolve = resolve
        self.resolve_every = resolve_every if resolve_every is not None else max(interval, 1.0)
        self._kw = dict(pusher_kw, interval=interval)
        self._lock = threading.Lock()
        self._pushers: dict[tuple[str, str], Pusher] = {}
        self._latest: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="push-resolve", daemon=True)
        self._resolve_log = RateLimitedLog(math.inf, log)  # once per URL until it resolves

    @property
    def pushers(self) -> list[Pusher]:
        with self._lock:
            return list(self._pushers.values())

    def _addresses(self, url: str) -> list[str]:
        u = urlsplit(url)
        host = u.hostname or ""
        if _is_ip(host):
            return [""]
        try:
            addrs = self.resolve(host, u.port or (443 if u.scheme == "https" else 80))
        except OSError as e:
            self._resolve_log.warn(url, "push: cannot resolve %s (%s); using the name as it is", host, e)
            return []
        self._resolve_log.clear(url)
        return addrs or []

    def refresh(self) -> None:
        """Resolve every URL and start or stop pushers to match."""
        want: set[tuple[str, str]] = set()
        for url in self.urls:
            addrs = self._addresses(url)
            if not addrs:  # unresolvable: keep what we have for it, else try the name itself
                keep = [k for k in self._pushers if k[0] == url]
                want.update(keep or [(url, "")])
            else:
                want.update((url, a) for a in addrs)
        with self._lock:
            if self._stop.is_set():
                return
            gone = [self._pushers.pop(k) for k in list(self._pushers) if k not in want]
            new = []
            for k in sorted(want - set(self._pushers)):
                p = Pusher(k[0], self.timeout, address=k[1], **self._kw)
                self._pushers[k] = p
                new.append(p)
            latest = self._latest
        for p in new:
            log.info("push: endpoint %s", p.label)
            p.start()
            if latest is not None:
                p.offer(latest)
        for p in gone:
            log.info("push: endpoint %s gone (no longer resolved)", p.label)
            threading.Thread(target=p.stop, kwargs={"timeout": 5.0}, daemon=True).start()

    def start(self) -> None:
        self._thread.start()  # the first resolution too: a slow DNS never delays the caller

    def _run(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - resolution must not end the pushes
                log.exception("push: refreshing the endpoints failed")
            if self._stop.wait(self.resolve_every):
                return

    def offer(self, payload: dict[str, Any]) -> None:
        with self._lock:
            self._latest = payload
            pushers = list(self._pushers.values())
        for p in pushers:
            p.offer(payload)

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:  # from here on no refresh adds a pusher
            self._stop.set()
        pushers = self.pushers
        for p in pushers:  # all at once, then wait: stopping takes one timeout, not one each
            p.request_stop()
        for p in pushers:
            p.stop(timeout)

    def metrics(self) -> Iterator[Metric]:
        return iter(push_metrics(self.pushers))
