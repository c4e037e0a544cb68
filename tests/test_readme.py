"""README.md's commands are real: scripts, flags, config and platform paths, make targets, imports.

Every fenced ``bash`` block is split into commands (backslash continuations joined, comments
dropped). A command that names ``launch/X.py`` (run by python, deepspeed, srun, docker or
``ray job submit ... --``) must name an existing script, and every ``--flag`` after the script
must appear in that script's ``--help``. Repository paths (configs/, platform/, docs/, ...)
must exist, ``make`` targets must be in the Makefile, and ``python`` blocks must parse and
import only names that exist.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SCRIPT = re.compile(r"^launch/\w+\.py$")
REPO_PATH = re.compile(r"^(?:configs|platform|docs|launch|bench)/[\w./-]+$")
DOC_LINK = re.compile(r"\]\(((?:docs|platform|configs)/[^)#\s]+|[A-Z]+\.md)\)")


def blocks(lang: str) -> list[str]:
    return [body for kind, body in BLOCK.findall(README.read_text()) if kind == lang]


def commands() -> list[list[str]]:
    """Every shell command of the README's bash blocks, as tokens."""
    found = []
    for body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                found.append(tokens)
    return found


@functools.cache
def help_text(script: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-2000:]}"
    return result.stdout


def script_calls() -> list[tuple[str, list[str]]]:
    calls = []
    for tokens in commands():
        for i, token in enumerate(tokens):
            if SCRIPT.match(token):
                calls.append((token, tokens[i + 1 :]))
                break
    return calls


def test_readme_has_the_commands_of_every_stage():
    scripts = {script for script, _ in script_calls()}
    assert {
        f"launch/{n}.py" for n in ("shard", "pretrain", "export", "finetune", "embed")
    } <= scripts
    lines = [" ".join(t) for t in commands()]
    for text in (
        "make demo",
        "make test",
        "ray job submit",
        "deepspeed --num_gpus",
        "deepspeed --hostfile",
        "sbatch platform/slurm",
        "docker build",
        "docker run",
    ):
        assert any(text in line for line in lines), text


@pytest.mark.parametrize("script", sorted({s for s, _ in script_calls()}))
def test_every_flag_is_in_the_scripts_help(script):
    assert (ROOT / script).is_file(), script
    shown = help_text(script)
    for name, args in script_calls():
        if name != script:
            continue
        for arg in args:
            if arg.startswith("--"):
                flag = arg.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", shown), (
                    f"README: {script} {flag} is not in `{script} --help`"
                )


def test_repository_paths_and_links_exist():
    paths = {t for tokens in commands() for t in tokens if REPO_PATH.match(t)}
    paths |= {
        t.split("=", 1)[1]
        for tokens in commands()
        for t in tokens
        if "=" in t and REPO_PATH.match(t.split("=", 1)[1])
    }
    paths |= set(DOC_LINK.findall(README.read_text()))
    assert any(p.startswith("configs/") for p in paths)
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README names missing files: {missing}"


def test_make_targets_exist():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    used = {tokens[1] for tokens in commands() if tokens[0] == "make" and len(tokens) > 1}
    assert {"demo", "test"} <= used
    assert used <= targets, f"README uses make targets not in the Makefile: {used - targets}"


def test_python_blocks_parse_and_import_real_names():
    code = blocks("python")
    assert code, "README should show musicoder.load_encoder in Python"
    for body in code:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    importlib.import_module(alias.name)
        assert "load_encoder" in body


def _option_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == flag]


def test_configs_and_overrides_load():
    """`--config`, `--task` and `--set` of each README command build a valid config."""
    from musicoder.config import load_config
    from musicoder.downstream import FinetuneConfig
    from musicoder.downstream.config import task_flags
    from musicoder.sharding import ShardJobConfig
    from musicoder.training.config import PretrainConfig

    schemas = {
        "launch/shard.py": ShardJobConfig,
        "launch/pretrain.py": PretrainConfig,
        "launch/finetune.py": FinetuneConfig,
    }
    checked = 0
    for script, args in script_calls():
        if script not in schemas:
            continue
        flags = task_flags(next(iter(_option_values(args, "--task")), None))
        files = [str(ROOT / f) for f in _option_values(args, "--config")]
        load_config(schemas[script], files, _option_values(args, "--set"), flags)
        checked += 1
    assert checked >= 8
