"""PodWatcher and capacity advertisement against a local HTTP server that speaks the Kubernetes
API shapes: pod list + chunked watch streams (ADDED/MODIFIED/DELETED/BOOKMARK/ERROR 410), Node
GET, Node status PATCH (incl. 403), errors (500, garbage JSON) and slow answers."""

import json
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from agent.capacity import CapacityError, advertise_link_speed, publish_capacity, read_link_speed
from agent.kube import ApiEndpoint, PodWatcher

NODE = "node1"


def pod(uid, name, rv, labels=None):
    return {"metadata": {"uid": uid, "namespace": "ns", "name": name, "resourceVersion": str(rv), "labels": labels or {}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "resources": {"limits": {"cpu": "250m"}}}]},
            "status": {"phase": "Running", "qosClass": "Burstable"}}


NODE_OBJ = {"metadata": {"name": NODE}, "status": {"allocatable": {"cpu": "3920m", "memory": "16384Ki"},
                                                   "capacity": {"cpu": "4", "memory": "16Gi"}}}


class FakeApi:
    def __init__(self):
        self.pods = {"u1": pod("u1", "a", 10)}
        self.rv = 10
        self.list_script = []  # per LIST: "ok" | 500 | "garbage" | ("slow", seconds)
        self.watch_script = []  # per WATCH: "ok" | 410 | 500
        self.node_script = []
        self.patch_script = []
        self.events = queue.Queue()  # dicts to stream, or "close"
        self.requests = []
        self.patches = []
        self.lock = threading.Lock()

    def next(self, script):
        with self.lock:
            return script.pop(0) if script else "ok"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    api: FakeApi = None

    def log_message(self, *a):
        pass

    def send_json(self, code, obj=None, raw=None):
        body = raw if raw is not None else json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def status(self, code, reason):
        self.send_json(code, {"kind": "Status", "status": "Failure", "code": code, "reason": reason, "message": reason})

    def do_GET(self):
        api = self.api
        u = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(u.query).items()}
        api.requests.append((u.path, q, dict(self.headers)))
        if u.path == f"/api/v1/nodes/{NODE}":
            act = api.next(api.node_script)
            return self.send_json(200, NODE_OBJ) if act == "ok" else self.status(act, "node failure")
        if u.path != "/api/v1/pods" or q.get("fieldSelector") != f"spec.nodeName={NODE}":
            return self.status(404, "not found")
        if q.get("watch") in ("1", "true"):
            return self.watch(q)
        act = api.next(api.list_script)
        if isinstance(act, tuple):
            time.sleep(act[1])
            act = "ok"
        if act == "garbage":
            return self.send_json(200, raw=b"{not json")
        if act != "ok":
            return self.status(act, "list failure")
        self.send_json(200, {"kind": "PodList", "metadata": {"resourceVersion": str(api.rv)}, "items": list(api.pods.values())})

    def chunk(self, data: bytes):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, q):
        api = self.api
        act = api.next(api.watch_script)
        if act != "ok":
            return self.status(act, "watch failure")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        end = time.monotonic() + float(q.get("timeoutSeconds", "5"))
        try:
            while time.monotonic() < end:
                try:
                    ev = api.events.get(timeout=0.05)
                except queue.Empty:
                    continue
                if ev == "close":
                    break
                self.chunk(ev if isinstance(ev, bytes) else json.dumps(ev).encode() + b"\n")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass

    def do_PATCH(self):
        api = self.api
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        api.patches.append((self.path, self.headers.get("Content-Type"), json.loads(body), self.headers.get("Authorization")))
        act = api.next(api.patch_script)
        if act == "ok":
            return self.send_json(200, NODE_OBJ)
        return self.status(act, "nodes \"node1\" is forbidden: User cannot patch resource \"nodes/status\"")


@pytest.fixture
def api():
    fake = FakeApi()
    handler = type("H", (Handler,), {"api": fake})
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    fake.endpoint = ApiEndpoint(base_url=f"http://127.0.0.1:{srv.server_address[1]}", token="tok")
    yield fake
    while True:  # let hanging watch handlers finish
        try:
            fake.events.put_nowait("close")
            break
        except queue.Full:
            break
    srv.shutdown()
    srv.server_close()


def wait_for(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return False


def watcher(api, **kw):
    kw.setdefault("timeout", 2.0)
    kw.setdefault("backoff_initial", 0.01)
    kw.setdefault("backoff_max", 0.05)
    kw.setdefault("rand", lambda: 0.0)
    w = PodWatcher(api.endpoint, NODE, **kw)
    w.start()
    return w


def watches(api):
    return [q for p, q, _ in api.requests if p == "/api/v1/pods" and q.get("watch")]


def lists(api):
    return [q for p, q, _ in api.requests if p == "/api/v1/pods" and not q.get("watch")]


def test_list_then_watch_events(api):
    w = watcher(api, tenant_label="team")
    try:
        assert wait_for(lambda: w.snapshot().synced and watches(api))
        v = w.snapshot()
        assert set(v.pods) == {"u1"} and v.node.cpu_allocatable_cores == pytest.approx(3.92)
        assert v.node.memory_allocatable_bytes == 16 << 20
        first = watches(api)[0]
        assert first["resourceVersion"] == "10" and first["allowWatchBookmarks"] == "true"
        assert api.requests[0][2]["Authorization"] == "Bearer tok"
        api.events.put({"type": "ADDED", "object": pod("u2", "b", 11, {"team": "blue"})})
        api.events.put({"type": "MODIFIED", "object": pod("u1", "a", 12, {"team": "red"})})
        assert wait_for(lambda: set(w.snapshot().pods) == {"u1", "u2"} and w.snapshot().pods["u1"].tenant == "red")
        assert w.snapshot().pods["u2"].tenant == "blue"
        api.events.put({"type": "DELETED", "object": pod("u2", "b", 13)})
        api.events.put({"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": "20"}}})
        assert wait_for(lambda: set(w.snapshot().pods) == {"u1"})
        time.sleep(0.1)
        api.events.put("close")  # the server ends the watch: resume from the bookmark
        assert wait_for(lambda: len(watches(api)) >= 2)
        assert watches(api)[1]["resourceVersion"] == "20"
        assert len(lists(api)) == 1
    finally:
        w.stop()


def test_error_410_event_relists(api):
    w = watcher(api)
    try:
        assert wait_for(lambda: watches(api))
        api.pods = {"u9": pod("u9", "z", 30)}
        api.rv = 30
        api.events.put({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                    "message": "too old resource version: 10 (25)"}})
        assert wait_for(lambda: set(w.snapshot().pods) == {"u9"})
        assert len(lists(api)) == 2 and w.snapshot().relists_total == 2
        assert wait_for(lambda: any(q["resourceVersion"] == "30" for q in watches(api)))
    finally:
        w.stop()


def test_http_410_on_watch_relists(api):
    api.watch_script = [410]
    w = watcher(api)
    try:
        assert wait_for(lambda: len(lists(api)) == 2 and len(watches(api)) == 2)
        assert w.snapshot().errors_total == 0
    finally:
        w.stop()


def test_errors_back_off_then_recover(api):
    api.list_script = [500, "garbage", 403]
    w = watcher(api)
    try:
        assert wait_for(lambda: w.snapshot().synced)
        v = w.snapshot()
        assert v.errors_total == 3 and v.last_error == "" and set(v.pods) == {"u1"}
        assert len(lists(api)) == 4
    finally:
        w.stop()


def test_rbac_hint_in_error(api):
    api.list_script = [403] * 100
    w = watcher(api)
    try:
        assert wait_for(lambda: w.snapshot().errors_total >= 1)
        assert "RBAC" in w.snapshot().last_error and not w.snapshot().synced
    finally:
        w.stop()


def test_last_good_view_kept_on_errors(api):
    w = watcher(api)
    try:
        assert wait_for(lambda: watches(api))
        api.watch_script = [500] * 1000
        api.node_script = [500] * 1000
        api.events.put(b"{garbage\n")  # a garbled event ends this watch
        assert wait_for(lambda: w.snapshot().errors_total >= 3)
        v = w.snapshot()
        assert set(v.pods) == {"u1"} and v.node is not None and v.synced
        assert v.last_error
    finally:
        w.stop()


def test_slow_answers_never_block_snapshot_or_stop(api):
    api.list_script = [("slow", 3.0)]
    w = watcher(api, timeout=0.3)
    try:
        t0 = time.monotonic()
        for _ in range(100):
            w.snapshot()
        assert time.monotonic() - t0 < 0.1
        assert wait_for(lambda: w.snapshot().errors_total >= 1, timeout=3)
        assert "Timeout" in w.snapshot().last_error or "timed out" in w.snapshot().last_error
    finally:
        t0 = time.monotonic()
        w.stop(timeout=2.0)
        assert time.monotonic() - t0 < 2.5


def test_stop_returns_promptly_during_an_idle_watch(api):
    w = watcher(api, watch_seconds=300, node_refresh_seconds=300)
    assert wait_for(lambda: watches(api))
    time.sleep(0.2)  # the thread now waits inside the stream
    t0 = time.monotonic()
    w.stop(timeout=2.0)
    took = time.monotonic() - t0
    assert took < 1.0 and not w._thread.is_alive()


# -- capacity -------------------------------------------------------------------------------------
def test_publish_capacity_patch(api):
    publish_capacity(api.endpoint, NODE, 10_000_000_000)
    path, ctype, body, auth = api.patches[0]
    assert path == f"/api/v1/nodes/{NODE}/status" and ctype == "application/json-patch+json"
    assert body == [{"op": "add", "path": "/status/capacity/example.com~1SLO", "value": "10000000000"}]
    assert auth == "Bearer tok"


def test_publish_capacity_forbidden_is_clear(api):
    api.patch_script = [403, 500]
    with pytest.raises(CapacityError, match="nodes/status.*patch|patch.*nodes/status"):
        publish_capacity(api.endpoint, NODE, 1)
    with pytest.raises(CapacityError, match="HTTP 500"):
        publish_capacity(api.endpoint, NODE, 1)
    with pytest.raises(CapacityError, match="failed"):
        publish_capacity(ApiEndpoint("http://127.0.0.1:9"), NODE, 1, timeout=0.5)


def test_advertise_link_speed_from_sysfs(api, tmp_path):
    (tmp_path / "ens5").mkdir()
    (tmp_path / "ens5" / "speed").write_text("25000\n")
    (tmp_path / "veth0").mkdir()
    (tmp_path / "veth0" / "speed").write_text("-1\n")
    assert advertise_link_speed(api.endpoint, NODE, "example.com/SLO", "ens5", str(tmp_path)) == 25_000_000_000
    assert api.patches[-1][2][0]["value"] == "25000000000"
    with pytest.raises(CapacityError, match="no link speed"):
        advertise_link_speed(api.endpoint, NODE, interface="veth0", sys_class_net=str(tmp_path))
    with pytest.raises(CapacityError, match="no interface"):
        read_link_speed("eth9", str(tmp_path))
    assert len(api.patches) == 1
