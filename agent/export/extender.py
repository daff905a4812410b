"""Push reports to the scheduler extender: ``POST <url>/metrics/report``.

A one-slot mailbox fed with every new report (latest wins: a newer report replaces an
undelivered one, nothing queues), delivered at most once per ``interval``, from its own thread, a timeout per attempt, retries with exponential backoff and jitter, an optional
bearer token re-read from a file on every attempt (rotation), TLS verification on by default.
A slow or broken extender only ever delays this thread.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from typing import Any, Callable, Iterator

import requests
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

log = logging.getLogger(__name__)

CAUSES = ("timeout", "connection", "tls", "http_4xx", "http_5xx", "http_other",
          "invalid_response", "token", "other")


def classify(exc: BaseException | None, status: int | None = None) -> str:
    if exc is None:
        if status is None:
            return "other"
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


class Pusher:
    def __init__(self, url: str, timeout: float, *, interval: float = 0.0,
                 token_file: str = "", ca_file: str = "",
                 verify: bool = True, backoff_first: float = 1.0, backoff_max: float = 30.0,
                 wall: Callable[[], float] = time.time) -> None:
        self.endpoint = url.rstrip("/") + "/metrics/report"
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
        # metrics
        self.attempts = 0
        self.failures = {c: 0 for c in CAUSES}
        self.replaced = 0  # undelivered (failed) reports superseded by a newer one
        self.delivered = 0
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

    def stop(self, timeout: float = 2.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._session.close()
        self._thread.join(timeout)

    @property
    def pending(self) -> bool:
        with self._cv:
            return self._pending is not None

    # -- worker ------------------------------------------------------------------------------------
    def _run(self) -> None:
        delay = self.backoff_first
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
            ok = self._attempt(payload)
            with self._cv:
                if ok:
                    if self._pending is payload:
                        self._pending = None
                    self._pending_failed = False
                    self._next_send = time.monotonic() + self.interval
                    delay = self.backoff_first
                    continue
                self._pending_failed = True
                # back off, but wake at once for stop; a newer report is sent after the wait
                wait = delay * random.uniform(0.8, 1.2)
                delay = min(delay * 2, self.backoff_max)
                self._cv.wait_for(lambda: self._stop, timeout=wait)
                if self._stop:
                    return

    def _attempt(self, payload: dict[str, Any]) -> bool:
        self.attempts += 1
        headers = {"Content-Type": "application/json"}
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    headers["Authorization"] = "Bearer " + f.read().strip()
            except OSError as e:
                return self._fail("token", f"cannot read token file {self.token_file}: {e}")
        try:
            resp = self._session.post(self.endpoint, data=json.dumps(payload), headers=headers,
                                      timeout=(self.timeout, self.timeout), verify=self.verify)
            status = resp.status_code
            resp.close()
        except requests.exceptions.RequestException as e:
            return self._fail(classify(e), f"{type(e).__name__}: {e}")
        except Exception as e:  # noqa: BLE001 - the pusher thread must outlive any surprise
            return self._fail("other", f"{type(e).__name__}: {e}")
        if 200 <= status < 300:
            self.delivered += 1
            self.last_success = self._wall()
            self.last_delivered_sequence = payload.get("sequence")
            if self.last_error:
                log.info("push to %s recovered", self.endpoint)
            self.last_error = ""
            return True
        return self._fail(classify(None, status), f"HTTP {status}")

    def _fail(self, cause: str, detail: str) -> bool:
        self.failures[cause] += 1
        if detail != self.last_error:  # log changes, not every retry
            log.warning("push to %s failed (%s): %s", self.endpoint, cause, detail)
        self.last_error = detail
        return False

    # -- metrics -------------------------------------------------------------------------------------
    def metrics(self) -> Iterator[Metric]:
        a = CounterMetricFamily("ebpf_push_attempts", "Push attempts to the scheduler extender")
        a.add_metric([], self.attempts)
        yield a
        f = CounterMetricFamily("ebpf_push_failures", "Failed push attempts by cause", labels=["cause"])
        for c, n in self.failures.items():
            f.add_metric([c], n)
        yield f
        d = CounterMetricFamily("ebpf_push_delivered", "Reports the extender accepted (2xx)")
        d.add_metric([], self.delivered)
        yield d
        r = CounterMetricFamily("ebpf_push_replaced",
                                "Undelivered reports replaced by a newer one (latest wins)")
        r.add_metric([], self.replaced)
        yield r
        p = GaugeMetricFamily("ebpf_push_pending", "1 while a report waits for delivery")
        p.add_metric([], 1 if self.pending else 0)
        yield p
        if self.last_success is not None:
            s = GaugeMetricFamily("ebpf_push_last_success_timestamp_seconds",
                                  "Unix time of the last accepted push")
            s.add_metric([], self.last_success)
            yield s
