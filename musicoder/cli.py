"""Shared plumbing of the `launch/*.py` scripts: a parser whose `--help` shows the script's
examples, and the one-line error exit every script uses.

A script's module docstring is its help: the first line becomes the description and the rest
(commands with examples, outputs, notes) the epilog, printed verbatim.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


def make_parser(doc: str | None) -> argparse.ArgumentParser:
    """An ArgumentParser described by a script's docstring (`__doc__`)."""
    first, _, rest = (doc or "").strip().partition("\n")
    return argparse.ArgumentParser(
        description=first,
        epilog=rest.strip("\n") or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def fail(parser: argparse.ArgumentParser, error: BaseException | str) -> NoReturn:
    """Exit 2 with one line `error: <reason>` on stderr (the reason names the file or key)."""
    parser.exit(2, f"error: {error}\n")
