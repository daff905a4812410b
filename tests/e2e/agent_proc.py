"""Start the real agent (console script) and a real Prometheus for end-to-end tests."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Agent:
    def __init__(self, *args: str, env: dict | None = None) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="agent-", suffix=".log", delete=False)
        # kept for output() after stop(); removed on __exit__, or when this process exits for
        # the callers (benchmarks) that only stop() it
        atexit.register(functools.partial(Path(self.log.name).unlink, missing_ok=True))
        e = {k: v for k, v in os.environ.items() if not k.startswith("EBPF_EDGE_AGENT_")}
        e.update(env or {})
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "ebpf-edge-agent"), "run", "--listen", f"127.0.0.1:{self.port}", *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=e)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: {self.output()}")
            try:
                if http_get(self.base + "/readyz", 2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"agent not ready after {timeout}s: {self.output()}")

    def report(self) -> dict:
        code, body = http_get(self.base + "/report")
        assert code == 200, body
        return json.loads(body)

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def output(self) -> str:
        return Path(self.log.name).read_text()[-4000:]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return time.monotonic() - t0

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        Path(self.log.name).unlink(missing_ok=True)


class Prometheus:
    """A real Prometheus on loopback. ``target``: one static job named ebpf-edge-agent; or
    ``scrape_configs``: the jobs as given (e.g. what the Prometheus Operator generates)."""

    def __init__(self, target: str | None = None, scrape_interval: str = "1s",
                 scrape_configs: list[dict] | None = None) -> None:
        import yaml

        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("prometheus is not installed: run make dev-setup")
        self.dir = tempfile.mkdtemp(prefix="prom-")
        self.port = free_port()
        cfg = Path(self.dir) / "prometheus.yml"
        jobs = scrape_configs if scrape_configs is not None else [
            {"job_name": "ebpf-edge-agent", "static_configs": [{"targets": [target]}]}]
        cfg.write_text(yaml.safe_dump({
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
            "scrape_configs": jobs}, sort_keys=False))
        self.proc = subprocess.Popen(
            [binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.dir}/data",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if http_get(self.base + "/-/ready", 1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list:
        code, body = http_get(self.base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
        doc = json.loads(body)
        assert code == 200 and doc["status"] == "success", (expr, body)
        return doc["data"]["result"]

    def wait_for(self, expr: str, timeout: float = 30) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.query(expr)
            if res:
                return res
            time.sleep(0.5)
        raise AssertionError(f"no data for {expr!r} after {timeout}s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Prometheus":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
