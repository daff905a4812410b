"""The extender's configuration: file < environment < flags, errors that name the key, the value
and what is allowed, and the CLI's exit status 2."""

from __future__ import annotations

import shutil

import pytest

from extender.cli import main
from extender.config import ConfigError, default_schema_file, load_config


def test_precedence_file_env_flags(tmp_path):
    f = tmp_path / "extender.yaml"
    f.write_text("policy: seed004\nttl_factor: 4\nseed004: {latency: 30}\n")
    c = load_config(str(f), env={})
    assert c.policy == "seed004" and c.ttl_factor == 4.0 and c.seed004["latency"] == 30.0
    assert c.seed004["capacity"] == 40.0  # the others keep the seed's values
    c = load_config(str(f), env={"EBPF_EDGE_EXTENDER_TTL_FACTOR": "5"})
    assert c.ttl_factor == 5.0
    c = load_config(str(f), env={"EBPF_EDGE_EXTENDER_TTL_FACTOR": "5"}, flags={"ttl_factor": 6.0})
    assert c.ttl_factor == 6.0


def test_schema_file_from_the_environment_is_used(tmp_path):
    """The image sets EBPF_EDGE_EXTENDER_SCHEMA_FILE (its venv has no schemas/ beside the
    package); reading it must not first build a config with the missing default."""
    copy = tmp_path / "schema.json"
    shutil.copy(default_schema_file(), copy)
    c = load_config(env={"EBPF_EDGE_EXTENDER_SCHEMA_FILE": str(copy)})
    assert str(c.schema_file) == str(copy)


@pytest.mark.parametrize("env,key,needle", [
    ({"EBPF_EDGE_EXTENDER_POLICY": "best"}, "policy", "node-score, seed004"),
    ({"EBPF_EDGE_EXTENDER_TTL_FACTOR": "0.5"}, "ttl_factor", "1..1000"),
    ({"EBPF_EDGE_EXTENDER_TTL_FACTOR": "soon"}, "ttl_factor", "a number"),
    ({"EBPF_EDGE_EXTENDER_LISTEN": "8888"}, "listen", "HOST:PORT"),
    ({"EBPF_EDGE_EXTENDER_TOKEN_FILE": "/nonexistent"}, "token_file", "existing"),
    ({"EBPF_EDGE_EXTENDER_TLS_CERT_FILE": "/etc/hostname"}, "tls_key_file", "together"),
    ({"EBPF_EDGE_EXTENDER_SCHEMA_FILE": "/nonexistent.json"}, "schema_file", "Schema"),
    ({"EBPF_EDGE_EXTENDER_POLICYY": "seed004"}, "policyy", "did you mean 'policy'"),
])
def test_bad_values_name_key_value_and_what_is_allowed(env, key, needle):
    with pytest.raises(ConfigError) as e:
        load_config(env=env)
    assert e.value.key == key and needle in str(e.value)
    if f"EBPF_EDGE_EXTENDER_{key.upper()}" in env:
        assert "(from environment" in str(e.value)


def test_unknown_seed004_weight(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("seed004: {latncy: 3}\n")
    with pytest.raises(ConfigError, match="did you mean 'seed004.latency'"):
        load_config(str(f), env={})


def test_cli_exits_2_on_invalid_config(capsys, monkeypatch):
    monkeypatch.delenv("EBPF_EDGE_EXTENDER_POLICY", raising=False)
    assert main(["run", "--listen", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert "invalid configuration: listen: 'nonsense'" in err and "flag --listen" in err
