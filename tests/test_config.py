"""Tests for musicoder/config.py: precedence, validation, one-line errors, every file in configs/."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pathlib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from musicoder.config import (
    ConfigError,
    load_config,
    save_config,
    to_dict,
    to_yaml,
)

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"

# configs/<dir>/ -> (module, dataclass) that every YAML in that directory must load as.
SCHEMAS = {
    "model": ("musicoder.model", "MusiCoderConfig"),
    "shard": ("musicoder.sharding", "ShardJobConfig"),
    "pretrain": ("musicoder.training.config", "PretrainConfig"),
    "tasks": ("musicoder.downstream", "TaskConfig"),
}


@dataclass
class Inner:
    lr: float = 1e-3
    mode: Literal["fast", "slow"] = "fast"
    layers: list[int] = field(default_factory=lambda: [1, 2])


@dataclass
class Root:
    name: str = "default"
    seed: int = 0
    out: pathlib.Path = pathlib.Path("runs")
    limit: int | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed: must be >= 0, got {self.seed}")


def write(tmp_path: pathlib.Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def config_error(**kwargs) -> str:
    """Load Root expecting a ConfigError; return its message after checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load_config(Root, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


def test_defaults_only():
    assert load_config(Root) == Root()


def test_precedence_defaults_files_flags_set(tmp_path):
    first = write(tmp_path, "a.yaml", "name: from_a\nseed: 1\ninner:\n  lr: 0.5\n")
    second = write(tmp_path, "b.yaml", "seed: 2\ninner:\n  mode: slow\n")
    cfg = load_config(Root, files=[first, second])
    # The later file wins for seed; the earlier file's other keys survive; nested defaults stay.
    assert (cfg.name, cfg.seed, cfg.inner.lr, cfg.inner.mode) == ("from_a", 2, 0.5, "slow")
    assert cfg.inner.layers == [1, 2]

    flags = {"seed": 3, "name": None, "inner.lr": 0.25}  # None = flag not given
    cfg = load_config(Root, files=[first, second], flags=flags)
    assert (cfg.name, cfg.seed, cfg.inner.lr) == ("from_a", 3, 0.25)

    cfg = load_config(Root, files=[first, second], flags=flags, overrides=["seed=4", "seed=5"])
    assert cfg.seed == 5 and cfg.inner.lr == 0.25  # --set beats flags; the last --set wins


def test_set_values_are_yaml_not_python():
    cfg = load_config(
        Root,
        overrides=["inner.lr=3e-4", "name=123", "out=/data/run", "limit=7", "inner.mode=slow"],
    )
    assert cfg.inner.lr == pytest.approx(3e-4) and isinstance(cfg.inner.lr, float)
    assert cfg.name == "123" and cfg.out == pathlib.Path("/data/run") and cfg.limit == 7
    assert isinstance(cfg, Root) and isinstance(
        cfg.inner, Inner
    )  # plain dataclasses, not DictConfig
    cfg = load_config(Root, overrides=["name=__import__('os').getcwd()", "limit=null"])
    assert cfg.name == "__import__('os').getcwd()" and cfg.limit is None


def test_list_values(tmp_path):
    assert load_config(Root, overrides=["inner.layers=[4, 5, 6]"]).inner.layers == [4, 5, 6]
    path = write(tmp_path, "l.yaml", "inner:\n  layers:\n    - 7\n    - 8\n")
    assert load_config(Root, files=[path]).inner.layers == [7, 8]
    assert load_config(Root, flags={"inner.layers": (9,)}).inner.layers == [9]
    message = config_error(overrides=["inner.layers=[1, x]"])
    assert "inner.layers[1]" in message
    assert "inner.layers" in config_error(overrides=["inner.layers=3"])


def test_literal_validation(tmp_path):
    path = write(tmp_path, "lit.yaml", "inner:\n  mode: medium\n")
    message = config_error(files=[path])
    assert path in message and "inner.mode" in message and "medium" in message
    assert "fast" in message and "slow" in message  # the allowed values are listed
    assert "inner.mode" in config_error(overrides=["inner.mode=medium"])


def test_unknown_key_in_yaml_names_file_and_key(tmp_path):
    path = write(tmp_path, "unknown.yaml", "seed: 1\ninner:\n  lrr: 0.1\n")
    message = config_error(files=[path])
    assert path in message and "unknown key 'inner.lrr'" in message


def test_unknown_key_in_set_and_flags():
    assert "unknown key 'inner.bogus'" in config_error(overrides=["inner.bogus=1"])
    assert "unknown key 'nope'" in config_error(overrides=["nope=1"])
    assert "unknown key 'inner.x'" in config_error(flags={"inner.x": 1})


def test_wrong_type(tmp_path):
    message = config_error(overrides=["seed=abc"])
    assert message.startswith("--set seed=abc") and "'seed'" in message
    path = write(tmp_path, "t.yaml", "inner:\n  lr: [1, 2]\n")
    message = config_error(files=[path])
    assert path in message and "inner.lr" in message
    path = write(tmp_path, "s.yaml", "seed: 1\ninner: 3\n")
    assert "key 'inner'" in config_error(files=[path])  # OmegaConf omits the key here


def test_missing_file_and_bad_yaml(tmp_path):
    missing = str(tmp_path / "absent.yaml")
    message = config_error(files=[missing])
    assert missing in message and "not found" in message
    bad = write(tmp_path, "bad.yaml", "seed: 1\ninner: [1,\n")
    message = config_error(files=[bad])
    assert bad in message and "line" in message
    dup = write(tmp_path, "dup.yaml", "seed: 1\nseed: 2\n")
    assert dup in config_error(files=[dup])
    listing = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    assert "mapping" in config_error(files=[listing])
    empty = write(tmp_path, "empty.yaml", "# nothing set here\n")
    assert load_config(Root, files=[empty]) == Root()


def test_malformed_set():
    assert "KEY=VALUE" in config_error(overrides=["seed"])
    assert "KEY=VALUE" in config_error(overrides=["=3"])
    assert "--set inner.layers=[1," in config_error(overrides=["inner.layers=[1,"])


def test_post_init_errors_become_one_line():
    message = config_error(overrides=["seed=-2"])
    assert "seed: must be >= 0, got -2" in message and "Root" in message


def test_to_dict_to_yaml_save_round_trip(tmp_path):
    cfg = Root(name="123", seed=3, out=pathlib.Path("/x/y"), inner=Inner(mode="slow", layers=[3]))
    as_dict = to_dict(cfg)
    assert as_dict["out"] == "/x/y" and as_dict["inner"] == {
        "lr": 1e-3,
        "mode": "slow",
        "layers": [3],
    }
    json.dumps(as_dict)  # JSON-safe leaves
    assert "!!python" not in to_yaml(cfg)
    target = tmp_path / "sub" / "config.yaml"
    save_config(cfg, str(target))
    assert target.read_text() == to_yaml(cfg)
    assert load_config(Root, files=[str(target)]) == cfg  # '123' stays a string
    with pytest.raises(TypeError):
        to_dict(Root)


def _config_files() -> list[pathlib.Path]:
    return sorted(p for p in CONFIGS.rglob("*") if p.suffix in {".yaml", ".yml", ".json"})


def _schema_for(path: pathlib.Path) -> type:
    group = path.relative_to(CONFIGS).parts[0]
    if group not in SCHEMAS:
        pytest.fail(f"{path}: no schema mapped for configs/{group}/ (add it to SCHEMAS)")
    module_name, class_name = SCHEMAS[group]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            pytest.skip(f"{module_name} does not exist yet: cannot check {path.name}")
        raise  # the module exists but one of its own imports is broken: that is a failure
    schema = getattr(module, class_name, None)
    if schema is None:
        pytest.skip(f"{module_name}.{class_name} is not defined yet: cannot check {path.name}")
    assert dataclasses.is_dataclass(schema), f"{module_name}.{class_name} is not a dataclass"
    return schema


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_file_loads(path: pathlib.Path):
    if path.suffix == ".json":
        assert path.parts[-2] == "deepspeed", f"{path}: JSON configs belong in configs/deepspeed/"
        assert isinstance(json.loads(path.read_text()), dict)
        return
    first_line = path.read_text().lstrip().splitlines()[0] if path.read_text().strip() else ""
    assert first_line.startswith("#"), f"{path}: must start with a comment giving its command"
    schema = _schema_for(path)
    cfg = load_config(schema, files=[str(path)])  # ConfigError = a broken config file
    assert isinstance(cfg, schema)


@pytest.mark.integration
def test_config_files_on_s3(s3_env):
    uri = f"{s3_env}/runs/config.yaml"
    cfg = Root(seed=8, inner=Inner(layers=[5]))
    save_config(cfg, uri)
    assert load_config(Root, files=[uri]) == cfg
    assert "not found" in config_error(files=[f"{s3_env}/runs/absent.yaml"])
