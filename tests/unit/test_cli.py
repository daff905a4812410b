"""The command line an operator meets: help that helps, --version, -v anywhere, JSON logs,
fix-it hints that fit where the command runs, and the passive smoke test's verdict."""

import importlib.metadata
import json
import logging
import re
from pathlib import Path

import pytest

from agent import __version__, cli, smoke
from agent.logs import JsonFormatter
from agent.model import ProbeSnapshot, ProbeState, ProbeStateKind

ROOT = Path(__file__).resolve().parents[2]


def help_text(capsys, *argv):
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_top_level_help_describes_the_program_and_each_command(capsys):
    out = help_text(capsys)
    assert "wiring only" not in out
    assert "network-aware scheduler" in out
    for cmd, example in (("run", "ebpf-edge-agent run --config"),
                         ("check-kernel", "ebpf-edge-agent check-kernel --require all"),
                         ("smoke-test", "ebpf-edge-agent smoke-test --passive")):
        assert cmd in out and example in out
    assert "EBPF_EDGE_AGENT_<KEY>" in out and "config/agent.example.yaml" in out


def test_run_help_points_at_the_example_config_and_smoke_help_warns_of_load(capsys):
    assert "config/agent.example.yaml" in help_text(capsys, "run")
    out = " ".join(help_text(capsys, "smoke-test").split())
    assert "CREATES LOAD" in out and "busy processes" in out and "--passive" in out
    assert "--require" in help_text(capsys, "check-kernel")


def test_version_is_written_once_and_names_bcc_and_the_kernel(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"ebpf-edge-agent {__version__}"
    assert lines[1].startswith("bcc ") and lines[2].startswith("kernel ")
    assert importlib.metadata.version("ebpf-edge-agent") == __version__
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), "the version is agent/__init__.py's"
    assert 'version = {attr = "agent.__version__"}' in pyproject


@pytest.mark.parametrize("argv", [["-v", "check-kernel"], ["check-kernel", "-v"],
                                  ["--log-format", "json", "smoke-test"],
                                  ["smoke-test", "--log-format", "json", "-v"]])
def test_common_options_before_or_after_the_command(argv):
    args = cli.build_parser().parse_args(argv)
    assert getattr(args, "verbose", False) or getattr(args, "log_format", None) == "json"
    if "-v" in argv:
        assert args.verbose is True


def test_a_bad_log_format_is_a_config_error(capsys, monkeypatch):
    monkeypatch.setenv("EBPF_EDGE_AGENT_LOG_FORMAT", "xml")
    assert cli.main(["check-kernel"]) == 2
    assert "log_format: 'xml' is not valid" in capsys.readouterr().err


def test_json_log_lines_carry_time_level_message_and_probe():
    fmt = JsonFormatter()
    rec = logging.LogRecord("agent.sampler", logging.ERROR, __file__, 1,
                            "probe %s down: %s", ("tcp_rtt", "boom"), None)
    rec.probe = "tcp_rtt"
    doc = json.loads(fmt.format(rec))
    assert doc["level"] == "error" and doc["message"] == "probe tcp_rtt down: boom"
    assert doc["probe"] == "tcp_rtt" and doc["logger"] == "agent.sampler"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", doc["time"])
    plain = logging.LogRecord("agent", logging.INFO, __file__, 1, 'say "hi"\nthere', (), None)
    line = fmt.format(plain)
    assert "\n" not in line and "probe" not in json.loads(line)
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        rec = logging.LogRecord("agent", logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    assert "ValueError: bad" in json.loads(fmt.format(rec))["exception"]


def test_the_sampler_names_the_probe_in_its_log_records(caplog):
    from agent.sampler import ProbeSet

    class Broken:
        name, detail = "skb_drop", {}

        def start(self):
            raise RuntimeError("compile error")

        def close(self):
            pass

    caplog.set_level(logging.ERROR)
    ProbeSet([Broken()]).start_all()
    (rec,) = [r for r in caplog.records if "down" in r.getMessage()]
    assert rec.probe == "skb_drop"


def test_fix_it_hints_fit_where_the_command_runs():
    for problem in ("headers", "tracefs", "bcc", "permission"):
        host, pod = cli._hint(problem, False), cli._hint(problem, True)
        assert host != pod and "dev-setup" not in pod
    assert "make dev-setup" in cli._hint("headers", False)
    assert "/host" in cli._hint("headers", True)


def test_in_container_detection(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(cli.os.path, "exists", lambda p: False)
    assert cli._in_container() is False
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert cli._in_container() is True


def _results(events: dict, states=None):
    states = states or {n: ProbeState(n, ProbeStateKind.UP) for n in events}
    wins = {n: ProbeSnapshot(n, "", 1.0, counts={"k": e} if e else {}) for n, e in events.items()}
    return states, wins


def test_passive_smoke_passes_with_quiet_probes_and_fails_on_a_down_one():
    states, wins = _results({"tcp_retrans": 0, "skb_drop": 3})
    res = smoke.summarize(states, wins, passive=True)
    assert res["tcp_retrans"].quiet and not res["skb_drop"].quiet
    assert smoke.passed(res, passive=True)
    assert not smoke.passed(smoke.summarize(states, wins))  # active: no events is a failure
    table = smoke.render_table(res)
    assert re.search(r"^tcp_retrans\s+quiet\s+0\s", table, re.M), table
    assert res["tcp_retrans"].as_dict()["state"] == "up" and res["tcp_retrans"].as_dict()["quiet"]
    states["skb_drop"] = ProbeState("skb_drop", ProbeStateKind.DOWN, "read failed")
    assert not smoke.passed(smoke.summarize(states, wins, passive=True), passive=True)
