"""Typed configuration loading: dataclass schemas, YAML files and command-line overrides.

Every entry script has one root ``@dataclass`` (it lives next to the code it configures) and
loads it here, with this precedence (later wins):

    dataclass defaults < ``--config`` YAML files, in order < explicit CLI flags < ``--set a.b=c``

The merge uses OmegaConf structured configs (>= 2.4, which validates ``Literal`` fields) and the
result is converted back to the dataclass, so library code only ever sees plain dataclasses.
OmegaConf reports problems as multi-line exceptions; this module turns every problem (unknown
key, wrong type, bad YAML, a failing ``__post_init__``) into a one-line :class:`ConfigError` that
names the key and, when it came from a file, the file. ``--set`` values are parsed as YAML
scalars/flow collections (OmegaConf's dotlist parsing), never evaluated as Python.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

log = logging.getLogger(__name__)

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration problem, described in one line naming the key (and file) and the reason."""


def load_config(
    schema: type[T],
    files: Sequence[str] = (),
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Build a config dataclass from defaults, YAML files, explicit flags and ``--set`` overrides.

    Args:
        schema: the root dataclass type.
        files: YAML files (local paths or storage URIs), merged in order.
        overrides: ``"a.b=value"`` strings, applied last, in order.
        flags: dotted key -> value from explicit CLI flags; a value of None means "not given".

    Returns:
        An instance of ``schema`` (``__post_init__`` checks have run).

    Raises:
        ConfigError: unknown key, wrong type, invalid value, unreadable or malformed file.
    """
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    cfg = OmegaConf.structured(schema)
    for path in files:
        cfg = _merge(cfg, _read_yaml(path), source=path)
    for key, value in (flags or {}).items():
        if value is not None:
            layer = _dotted_to_config(key, _plain(value), source=f"flag for '{key}'")
            cfg = _merge(cfg, layer, source=f"flag for '{key}'")
    for item in overrides:
        cfg = _merge(cfg, _parse_override(item), source=f"--set {item}")
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source=schema.__name__)) from None
    except ValueError as e:  # a __post_init__ check
        raise ConfigError(f"invalid {schema.__name__}: {_first_line(str(e))}") from None


def to_dict(cfg: Any) -> dict:
    """Return a config dataclass as plain JSON/YAML-safe containers (paths become strings)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return _plain(OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True))


def to_yaml(cfg: Any) -> str:
    """Return a config dataclass as YAML text that :func:`load_config` reads back."""
    return OmegaConf.to_yaml(to_dict(cfg))


def save_config(cfg: Any, uri: str) -> None:
    """Write a config dataclass as YAML to a local path or storage URI, atomically.

    Args:
        cfg: a config dataclass instance.
        uri: destination (local path, ``file://`` or ``s3://``).
    """
    from musicoder import storage  # lazy: parsing a config must not import boto3

    storage.write_text(uri, to_yaml(cfg))
    log.debug("saved config to %s", uri)


def _read_yaml(path: str) -> DictConfig:
    from musicoder import storage

    try:
        text = storage.read_text(str(path))
    except (OSError, UnicodeDecodeError) as e:
        reason = "file not found" if isinstance(e, FileNotFoundError) else _first_line(str(e))
        raise ConfigError(f"{path}: cannot read config: {reason}") from None
    try:
        loaded = OmegaConf.create(text) if text.strip() else OmegaConf.create({})
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML {_yaml_problem(e)}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source=str(path))) from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: top level must be a mapping of config keys, not a list")
    return loaded


def _parse_override(item: str) -> DictConfig:
    key, sep, _ = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. --set train.lr=3e-4")
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as e:
        raise ConfigError(
            f"--set {item}: cannot parse value{_yaml_problem(e, position=False)}"
        ) from None
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source=f"--set {item}")) from None


def _dotted_to_config(key: str, value: Any, *, source: str) -> DictConfig:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{source}: invalid key {key!r}")
    nested: Any = value
    for part in reversed(parts):
        nested = {part: nested}
    try:
        return OmegaConf.create(nested)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source=source)) from None


def _merge(base: DictConfig, layer: DictConfig, *, source: str) -> DictConfig:
    try:
        merged = OmegaConf.merge(base, layer)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or _failing_key(base, layer)
        raise ConfigError(_describe(e, source=source, key=key)) from None
    assert isinstance(merged, DictConfig)
    return merged


def _failing_key(base: DictConfig, layer: DictConfig | dict, prefix: str = "") -> str | None:
    """Find the dotted key whose merge fails (OmegaConf omits it for some errors)."""
    items = OmegaConf.to_container(layer) if isinstance(layer, DictConfig) else layer
    for key, value in items.items():
        dotted = f"{prefix}{key}"
        try:
            OmegaConf.merge(base, _dotted_to_config(dotted, value, source=dotted))
        except (OmegaConfBaseException, ConfigError):
            if isinstance(value, dict):
                return _failing_key(base, value, prefix=f"{dotted}.") or dotted
            return dotted
    return None


def _describe(e: OmegaConfBaseException, *, source: str, key: str | None = None) -> str:
    """One line from an OmegaConf exception: '<source>: <key problem>'."""
    key = key or getattr(e, "full_key", None)
    msg = _first_line(getattr(e, "msg", None) or str(e))
    if isinstance(e, ConfigKeyError) and key:
        owner = getattr(e, "object_type_str", None) or getattr(e, "parent_node", None)
        known = f" (not a field of {owner})" if isinstance(owner, str) and owner else ""
        return f"{source}: unknown key '{key}'{known}"
    if key:
        return f"{source}: key '{key}': {msg}"
    return f"{source}: {msg}"


def _yaml_problem(e: yaml.YAMLError, *, position: bool = True) -> str:
    mark = getattr(e, "problem_mark", None) if position else None
    where = f"at line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ": "
    return where + (getattr(e, "problem", None) or _first_line(str(e)))


def _first_line(text: str) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return lines[0] if lines else "unknown error"


def _plain(value: Any) -> Any:
    """Containers with JSON/YAML-safe leaves: paths become strings, tuples become lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value
