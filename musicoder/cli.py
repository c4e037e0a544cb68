"""Shared plumbing of the `launch/*.py` scripts (STYLE 6): a parser whose `--help` shows the
script's examples, `--config`/`--set` and their loading into the root config, and the one-line
error exit every script uses for expected failures.

A script's module docstring is its help: the first line becomes the description and the rest
(commands with examples, outputs, notes) the epilog, printed verbatim. Expected failures
(`EXPECTED_ERRORS`: a bad config, a missing or incomplete input, an unreadable manifest) end the
job with one line `error: <uri or key>: <reason>` and exit 2, printed once per job: under a
multi-rank launcher only global rank 0 prints it, every rank exits non-zero.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from typing import Any, NoReturn, TypeVar

from musicoder.config import load_config

T = TypeVar("T")

# OSError covers FileNotFoundError, NotADirectoryError, PermissionError and storage errors;
# ValueError covers ConfigError, ShardFormatError and every validation at a boundary.
EXPECTED_ERRORS = (ValueError, OSError)
EXIT_USAGE = 2


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser described by a script's docstring (`__doc__`)."""
    first, _, rest = (doc or "").strip().partition("\n")
    return argparse.ArgumentParser(
        description=first,
        epilog=rest.strip("\n") or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the repeatable ``--config FILE`` and ``--set KEY=VALUE`` options to a parser.

    Args:
        parser: the entry script's parser; the values land in ``args.config`` and ``args.set``.
    """
    parser.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="FILE",
        help="YAML config file (local path or URI); repeat to layer several, later files win",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.lr=3e-4 (value parsed as YAML); repeatable",
    )


def add_config_flags(parser: argparse.ArgumentParser, flags: Mapping[str, dict]) -> None:
    """Add a script's explicit flags (`--flag` -> argparse spec whose `dest` is a config key)."""
    for flag, spec in flags.items():
        parser.add_argument(flag, **spec)


def flag_values(args: argparse.Namespace, flags: Mapping[str, dict]) -> dict[str, Any]:
    """Config key -> value of each flag of :func:`add_config_flags` (None = not given)."""
    return {spec["dest"]: getattr(args, spec["dest"]) for spec in flags.values()}


def config_from_args(
    schema: type[T], args: argparse.Namespace, flags: Mapping[str, Any] | None = None
) -> T:
    """Load ``schema`` from parsed arguments of a parser set up by :func:`add_config_arguments`.

    Args:
        schema: the root dataclass type.
        args: parsed arguments; ``args.config`` and ``args.set`` are used.
        flags: explicit flags as dotted key -> value (None = not given on the command line).

    Returns:
        An instance of ``schema``.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    return load_config(
        schema,
        files=getattr(args, "config", None) or (),
        overrides=getattr(args, "set", None) or (),
        flags=flags,
    )


def describe(error: BaseException | str) -> str:
    """One line naming the file (or key) and the reason: an OSError with a file name becomes
    `<file>: <strerror>` (not `[Errno 2] ...`), anything else its message on one line."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


def is_rank_zero() -> bool:
    """True unless a launcher set `RANK` to another global rank."""
    return os.environ.get("RANK", "0") == "0"


def fail(parser: argparse.ArgumentParser, error: BaseException | str) -> NoReturn:
    """Exit 2 with one line `error: <reason>` on stderr (the reason names the file or key),
    printed by global rank 0 only: one line per job, however many ranks fail alike."""
    parser.exit(EXIT_USAGE, f"error: {describe(error)}\n" if is_rank_zero() else None)
