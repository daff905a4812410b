"""Every malformed config exits 2 before any BPF is loaded, naming the key and the bad value."""

import socket

import pytest

from agent import cli
from agent.config import Config, ConfigError, load_config


def run_main(capsys, argv, monkeypatch, env=None):
    for k in list(__import__("os").environ):
        if k.startswith("EBPF_EDGE_AGENT_"):
            monkeypatch.delenv(k)
    for k, v in (env or {}).items():
        monkeypatch.setenv(k, v)
    # loading a probe here would be a bug: config errors must come first
    from agent.probes import registry

    monkeypatch.setattr(registry, "build", lambda *a: pytest.fail("probes loaded before config check"))
    monkeypatch.setattr(registry, "detect_kernel", lambda *a, **k: pytest.fail("kernel probed before config check"))
    rc = cli.main(argv)
    return rc, capsys.readouterr().err


BAD_FILES = [
    ("unknown key", "sample_intervall: 5\n", "sample_intervall", "did you mean 'sample_interval'"),
    ("wrong type", "sample_interval: fast\n", "sample_interval", "'fast'"),
    ("negative interval", "sample_interval: -5\n", "sample_interval", "-5.0"),
    ("zero push interval", "push_interval: 0\n", "push_interval", "0.0"),
    ("timeout above interval", "push_interval: 10\npush_timeout: 20\n", "push_timeout", "less than push_interval"),
    ("bad url scheme", "extender_url: ftp://x/\n", "extender_url", "ftp://x/"),
    ("url without host", "extender_url: 'http://'\n", "extender_url", "http://"),
    ("bad url port", "extender_url: 'http://x:99999/'\n", "extender_url", "valid port"),
    ("api url bad port", "kubernetes_api_url: 'https://api:0x1/'\n", "kubernetes_api_url", "valid port"),
    ("api url scheme", "kubernetes_api_url: 'api.local'\n", "kubernetes_api_url", "api.local"),
    ("listen without port", "listen: 0.0.0.0\n", "listen", "HOST:PORT"),
    ("listen port range", "listen: '0.0.0.0:70000'\n", "listen", "70000"),
    ("unknown probe", "probes: [tcp_rtt, tcp_ack]\n", "probes", "tcp_ack"),
    ("empty probes", "probes: []\n", "probes", "non-empty"),
    ("probes not a list", "probes: 5\n", "probes", "a list"),
    ("bool for int", "max_addresses: true\n", "max_addresses", "True"),
    ("map too large", "max_addresses: 99999999\n", "max_addresses", "99999999"),
    ("log level", "log_level: loud\n", "log_level", "loud"),
    ("kubernetes mode", "kubernetes: maybe\n", "kubernetes", "maybe"),
    ("weights sum", "score:\n  weights: {rtt_p99: 0.9}\n", "score.weights", "sum to 1"),
    ("negative weight", "score:\n  weights: {rtt_p99: -0.1, cpu_util: 0.55}\n", "score.weights.rtt_p99", "-0.1"),
    ("unknown signal", "score:\n  weights: {latency: 0.3}\n", "score.weights.latency", "one of"),
    ("bounds inverted", "score:\n  bounds: {rtt_p99: [200, 1]}\n", "score.bounds.rtt_p99", "low < high"),
    ("unknown score key", "score:\n  weight: {}\n", "score.weight", "did you mean 'score.weights'"),
    ("negative drop weight", "score:\n  drop_reason_weights: {QDISC_DROP: -1}\n", "score.drop_reason_weights.QDISC_DROP", "-1"),
    ("token file missing", "extender_token_file: /nonexistent/token\n", "extender_token_file", "/nonexistent/token"),
    ("not a mapping", "- a\n- b\n", "config", "YAML mapping"),
    ("invalid yaml", "a: [1,\n", "config", "valid YAML"),
    ("slo negative", "default_rtt_slo_ms: -3\n", "default_rtt_slo_ms", "-3.0"),
]


@pytest.mark.parametrize("name,text,key,needle", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_config_file_exits_2_naming_key(tmp_path, capsys, monkeypatch, name, text, key, needle):
    f = tmp_path / "agent.yaml"
    f.write_text(text)
    rc, err = run_main(capsys, ["run", "--config", str(f)], monkeypatch)
    assert rc == 2
    assert "invalid configuration" in err and key in err and needle in err, err


def test_missing_config_file(capsys, monkeypatch, tmp_path):
    rc, err = run_main(capsys, ["run", "--config", str(tmp_path / "nope.yaml")], monkeypatch)
    assert rc == 2 and "config" in err and "readable" in err


def test_bad_environment_variable_names_the_variable(capsys, monkeypatch):
    rc, err = run_main(capsys, ["run"], monkeypatch, {"EBPF_EDGE_AGENT_SAMPLE_INTERVAL": "soon"})
    assert rc == 2 and "sample_interval" in err and "EBPF_EDGE_AGENT_SAMPLE_INTERVAL" in err


def test_unknown_environment_variable(capsys, monkeypatch):
    rc, err = run_main(capsys, ["run"], monkeypatch, {"EBPF_EDGE_AGENT_LISTN": ":1"})
    assert rc == 2 and "listn" in err and "did you mean 'listen'" in err


def test_bad_flag_names_the_flag(capsys, monkeypatch):
    rc, err = run_main(capsys, ["run", "--push-interval", "-1"], monkeypatch)
    assert rc == 2 and "push_interval" in err and "--push-interval" in err


def test_port_in_use_exits_2_before_bpf(capsys, monkeypatch):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        rc, err = run_main(capsys, ["run", "--listen", f"127.0.0.1:{port}"], monkeypatch)
    finally:
        s.close()
    assert rc == 2 and "listen" in err and str(port) in err and "cannot be bound" in err


def test_precedence_defaults_file_env_flags(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("sample_interval: 5\npush_interval: 60\nlisten: '127.0.0.1:1234'\n")
    c = load_config(str(f), {"EBPF_EDGE_AGENT_PUSH_INTERVAL": "45",
                             "EBPF_EDGE_AGENT_LISTEN": "127.0.0.1:2345"},
                    {"listen": "127.0.0.1:3456", "sample_interval": None})
    assert c.sample_interval == 5.0  # file
    assert c.push_interval == 45.0  # env over file
    assert c.listen == "127.0.0.1:3456"  # flag over env
    assert c.push_timeout == Config().push_timeout  # default


def test_score_section_merges_with_defaults(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("score:\n  drop_reason_weights: {NO_SOCKET: 0.2}\n  bounds: {rtt_p99: [2, 50]}\n")
    c = load_config(str(f), {}, {})
    assert c.score.drop_reason_weights["NO_SOCKET"] == 0.2
    assert c.score.drop_reason_weights["QDISC_DROP"] == 1.0
    assert c.score.bounds["rtt_p99"] == (2, 50) and c.score.bounds["cpu_util"] == (0.5, 1.0)


def test_empty_file_is_all_defaults(tmp_path):
    f = tmp_path / "a.yaml"
    f.write_text("")
    assert load_config(str(f), {}, {}) == Config()


def test_config_error_carries_key():
    with pytest.raises(ConfigError) as e:
        Config(sample_interval=0)
    assert e.value.key == "sample_interval"


def test_example_config_documents_the_defaults():
    from pathlib import Path

    ex = Path(__file__).resolve().parents[2] / "config" / "agent.example.yaml"
    c = load_config(str(ex), {}, {})
    assert c == Config(), "config/agent.example.yaml drifted from the defaults in agent/config.py"


# ---------------------------------------------------------------------------------------------
# Kubernetes service links: what the kubelet puts into every pod of the namespace (unless the pod
# sets enableServiceLinks: false), spelled exactly as kubelet's envvars.FromServices makes them


def kubelet_service_links(name: str, ip: str, ports: list[tuple[str, int, str]]) -> dict[str, str]:
    svc = name.upper().replace("-", "_")
    env = {f"{svc}_SERVICE_HOST": ip, f"{svc}_SERVICE_PORT": str(ports[0][1])}
    for pname, port, proto in ports:
        if pname:
            env[f"{svc}_SERVICE_PORT_{pname.upper().replace('-', '_')}"] = str(port)
    first = ports[0]
    env[f"{svc}_PORT"] = f"{first[2].lower()}://{ip}:{first[1]}"
    for _, port, proto in ports:
        base = f"{svc}_PORT_{port}_{proto.upper()}"
        env[base] = f"{proto.lower()}://{ip}:{port}"
        env[base + "_PROTO"] = proto.lower()
        env[base + "_PORT"] = str(port)
        env[base + "_ADDR"] = ip
    return env


SERVICE_LINKS = {
    **kubelet_service_links("ebpf-edge-agent", "10.96.0.12",
                            [("metrics", 9810, "TCP"), ("report", 9811, "TCP")]),
    **kubelet_service_links("ebpf-edge-agent-extender", "10.96.7.3", [("http", 8888, "TCP")]),
    **kubelet_service_links("ebpf-edge-agent-v6", "fd00:10:96::7", [("", 53, "UDP")]),
}


def test_kubelet_service_links_are_ignored_and_real_keys_still_apply():
    assert "EBPF_EDGE_AGENT_EXTENDER_SERVICE_PORT" in SERVICE_LINKS  # the crash loop on main
    assert "EBPF_EDGE_AGENT_PORT_9811_TCP_ADDR" in SERVICE_LINKS
    env = dict(SERVICE_LINKS, EBPF_EDGE_AGENT_SAMPLE_INTERVAL="5")
    c = load_config(None, env, {})
    assert c.sample_interval == 5.0 and c == Config(sample_interval=5.0)


def test_a_typo_under_the_prefix_still_fails_with_its_name():
    with pytest.raises(ConfigError, match="extender_urll: unknown key.*did you mean 'extender_url'"):
        load_config(None, dict(SERVICE_LINKS, EBPF_EDGE_AGENT_EXTENDER_URLL="http://x:1"), {})


@pytest.mark.parametrize("name,value", [
    ("EBPF_EDGE_AGENT_EXTENDER_SERVICE_PORT", "http"),  # the name of a link, not its value
    ("EBPF_EDGE_AGENT_EXTENDER_SERVICE_HOST", "extender.example"),
    ("EBPF_EDGE_AGENT_PORT", "9810"),  # <SVC>_PORT is a URL, never a bare port
    ("EBPF_EDGE_AGENT_SERVICE_PORTS", "9810"),
])
def test_only_the_kubelets_exact_shapes_are_tolerated(name, value):
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, {name: value}, {})


def test_no_config_key_has_the_shape_of_a_service_link():
    """A future key such as extender_service_port would be silently swallowed: never allowed."""
    from agent.config import service_link_name

    assert service_link_name("extender_service_port")  # the predicate is live
    bad = [k for k in Config.__dataclass_fields__ if service_link_name(k)]
    assert not bad, f"config keys shaped like Kubernetes service links: {bad}"

