"""Tests for musicoder/cli.py: --config/--set/flags precedence through argparse, and one-line
errors printed once per job."""

from __future__ import annotations

import argparse
import errno
from dataclasses import dataclass, field

import pytest

from musicoder.cli import add_config_arguments, config_from_args, describe, fail, make_parser


@dataclass
class Inner:
    lr: float = 1.0


@dataclass
class Root:
    name: str = "x"
    seed: int = 0
    inner: Inner = field(default_factory=Inner)


def test_argparse_round_trip(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("seed: 11\n")
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    parser.add_argument("--name")
    args = parser.parse_args(["--config", str(path), "--set", "inner.lr=0.1", "--name", "cli"])
    cfg = config_from_args(Root, args, flags={"name": args.name})
    assert (cfg.seed, cfg.inner.lr, cfg.name) == (11, 0.1, "cli")
    assert config_from_args(Root, parser.parse_args([]), flags={"name": None}) == Root()


def test_describe_names_the_file_not_the_errno():
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "/does/not/exist")
    assert describe(missing) == "/does/not/exist: No such file or directory"
    assert describe(ValueError("a.json: bad\n  detail")) == "a.json: bad detail"


@pytest.mark.parametrize("rank,printed", [(None, True), ("0", True), ("1", False)])
def test_fail_prints_once_per_job(rank, printed, monkeypatch, capsys):
    if rank is None:
        monkeypatch.delenv("RANK", raising=False)
    else:
        monkeypatch.setenv("RANK", rank)
    with pytest.raises(SystemExit) as exit_info:
        fail(make_parser("x\n"), ValueError("m.json: broken"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ("error: m.json: broken\n" if printed else "")
