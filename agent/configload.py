"""Configuration loading shared by the agent and the extender: defaults < YAML file <
environment < flags, every error naming the key, the bad value, where it came from and what
is allowed. No agent imports; each program declares its own frozen dataclass and its own
converters for the keys that are not plain scalars."""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Any, Callable, Collection, Mapping


class ConfigError(ValueError):
    def __init__(self, key: str, value: Any, allowed: str, source: str = "",
                 unknown: bool = False) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        where = f" (from {source})" if source else ""
        if unknown:
            super().__init__(f"{key}: unknown key{where}; {allowed}")
        else:
            super().__init__(f"{key}: {value!r} is not valid{where}: {allowed}")


def unknown_key(key: str, known: Collection[str], source: str, prefix: str = "") -> ConfigError:
    """The error for a key nobody declared, with the closest known one as a hint."""
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"did you mean {prefix + close[0]!r}? " if close else ""
    return ConfigError(prefix + key, None, f"{hint}known keys: {', '.join(sorted(known))}",
                       source, unknown=True)


def field_default(cls: type, key: str) -> Any:
    """A dataclass field's default, without building (and validating) a whole config."""
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def convert(key: str, raw: Any, default: Any, source: str) -> Any:
    """A value from YAML (typed) or env/flags (strings) -> the type of ``default``: bool, int,
    float, str, Path, or a tuple of str/Path (a list, or a comma-separated string)."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(raw, str) and raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)
        if isinstance(default, float):
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)
        if isinstance(default, str):
            if not isinstance(raw, (str, int)) or isinstance(raw, bool):
                raise ValueError
            return str(raw)
        if isinstance(default, Path):
            if not isinstance(raw, str) or not raw:
                raise ValueError
            return Path(raw)
        if isinstance(default, tuple):
            items = raw.split(",") if isinstance(raw, str) else raw
            if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
                raise ValueError
            items = tuple(i.strip() for i in items if i.strip())
            if default and isinstance(default[0], Path):
                return tuple(Path(i) for i in items)
            return items
    except (ValueError, TypeError):
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                tuple: "a list (or comma-separated string)"}.get(type(default), type(default).__name__)
        if isinstance(default, Path):
            kind = "a path"
        raise ConfigError(key, raw, kind, source) from None
    return raw


def read_yaml_mapping(file: str) -> dict:
    """The YAML file's top-level mapping ({} for an empty file); ConfigError otherwise."""
    import yaml

    try:
        text = Path(file).read_text()
    except OSError as e:
        raise ConfigError("config", file, f"a readable YAML file ({e.strerror})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("config", file, f"valid YAML ({str(e).splitlines()[0]})") from None
    doc = {} if doc is None else doc
    if not isinstance(doc, dict):
        raise ConfigError("config", file, "a YAML mapping of keys to values")
    return doc


def gather(fields: Collection[str], file: str | None, env: Mapping[str, str] | None,
           flags: Mapping[str, Any] | None, env_prefix: str,
           conv: Callable[[str, Any, str], Any], *, file_only: Collection[str] = (),
           env_ignored: Callable[[str, str], bool] = lambda name, value: False,
           ) -> tuple[dict[str, Any], dict[str, str]]:
    """(values, sources) from the file, then ``<env_prefix><KEY>`` variables, then flags (None:
    not given), each converted by ``conv(key, raw, source)``. ``file_only`` keys (nested
    sections) cannot come from the environment; ``env_ignored`` skips variables that are not
    ours though they carry the prefix (Kubernetes service links)."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if file:
        for k, v in read_yaml_mapping(file).items():
            k = str(k)
            if k not in fields:
                raise unknown_key(k, fields, file)
            values[k], sources[k] = conv(k, v, file), file
    env = os.environ if env is None else env
    for name, raw in env.items():
        if not name.startswith(env_prefix) or env_ignored(name, raw):
            continue
        k = name[len(env_prefix):].lower()
        if k not in fields or k in file_only:
            raise unknown_key(k, [f for f in fields if f not in file_only], f"environment {name}")
        values[k] = conv(k, raw, f"environment {name}")
        sources[k] = f"environment {name}"
    for k, raw in (flags or {}).items():
        if raw is None:
            continue
        src = f"flag --{k.replace('_', '-')}"
        values[k], sources[k] = conv(k, raw, src), src
    return values, sources


def build(cls: type, values: Mapping[str, Any], sources: Mapping[str, str]):
    """``cls(**values)``; a validation error is re-raised naming where its key came from."""
    try:
        return cls(**values)
    except ConfigError as e:
        src = sources.get(e.key.split(".")[0])
        if src and "(from " not in str(e):
            raise ConfigError(e.key, e.value, e.allowed, src) from None
        raise
