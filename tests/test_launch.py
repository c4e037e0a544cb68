"""Every launch/ script turns an expected failure (missing or incomplete input, bad config,
unreadable manifest) into one line `error: <uri>: <reason>` and exit 2: the user's commands."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RANK")}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def _cases(tmp: pathlib.Path) -> dict[str, tuple[list[str], str]]:
    bad_manifest = tmp / "broken-shards"
    bad_manifest.mkdir()
    (bad_manifest / "manifest.json").write_text("{not json")
    return {
        "shard, missing input": (
            ["launch/shard.py", "--input", "/does/not/exist", "--output", str(tmp / "out")],
            "error: /does/not/exist: No such file or directory",
        ),
        "shard, bad config": (
            ["launch/shard.py", "--input", str(tmp), "--output", str(tmp / "o"), "--set", "sed=1"],
            "error: ",
        ),
        "export, no checkpoint": (
            ["launch/export.py", str(tmp / "no-run"), str(tmp / "export")],
            f"error: {tmp / 'no-run'}",
        ),
        "curate, missing input": (
            ["launch/curate.py", "--input", "/does/not/exist", "--output", str(tmp / "view")],
            "error: /does/not/exist/manifest.json: no manifest",
        ),
        "embed, unreadable manifest": (
            ["launch/embed.py", "--encoder", str(tmp / "enc"), "--input", str(bad_manifest)],
            "error: ",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "shard, missing input",
        "shard, bad config",
        "export, no checkpoint",
        "curate, missing input",
        "embed, unreadable manifest",
    ],
)
def test_expected_failures_are_one_line(case, tmp_path):
    args, start = _cases(tmp_path)[case]
    proc = _run(*args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and lines[0].startswith(start), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
