"""Run one pipeline command (a `launch/*.py` script) as a child process, streaming its output.

The demo runs the real command-line tools, exactly as a user would, so what it prints is what
a user can copy. Output (stdout and stderr merged) goes line by line into this module's logger
as it arrives; progress bars, which redraw with carriage returns, are shown at most every
:data:`PROGRESS_EVERY_S` seconds. The last lines are kept so that a failure can show them.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

TAIL_LINES = 15
PROGRESS_EVERY_S = 5.0
INDENT = "    | "
# libmpg123 complains about the bit reservoir of valid MP3 frames on stderr, from C, for every
# decoded MP3; the audio decodes fine (tests compare it), so the demo counts these instead.
# Ray prefixes worker lines with "(task pid=N)", so match anywhere in the line.
NOISE = re.compile(r"\[src/libmpg123/|Note: Illegal Audio-MPEG-Header|libmpg123.*repeated \d+x")
_SPLIT = re.compile(rb"(\r\n|\n|\r)")


class CommandError(RuntimeError):
    """A command exited non-zero; ``tail`` holds its last output lines."""

    def __init__(self, command: str, code: int, tail: Sequence[str]) -> None:
        super().__init__(f"`{command}` exited with code {code}")
        self.code, self.tail = code, list(tail)


def display_path(path: str) -> str:
    """``path`` relative to the working directory when it lies below it, else unchanged."""
    if not os.path.isabs(path):
        return path
    rel = os.path.relpath(path)
    return path if rel == ".." or rel.startswith(".." + os.sep) else rel


def python_command(script: str, *args: str) -> list[str]:
    """``[python, script, *args]`` with this interpreter and display paths."""
    return [display_path(sys.executable), display_path(script), *args]


def format_command(argv: Sequence[str]) -> str:
    """The command as a shell line a user can paste."""
    return shlex.join(argv)


def run_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> list[str]:
    """Run ``argv`` in the current working directory and stream its output into the log.

    Args:
        argv: The command; relative paths resolve against the working directory.
        env: The child's environment (default: this process's).

    Returns:
        The last :data:`TAIL_LINES` lines of output (noise excluded).

    Raises:
        CommandError: non-zero exit, with the tail of the output.
        FileNotFoundError: the executable is missing.
    """
    command = format_command(argv)
    log.info("  $ %s", command)
    child_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    # One OpenMP thread per process, as `make demo` sets: on a busy 2-core machine, two
    # spinning threads per process made the probe ~10x slower (measured).
    child_env.setdefault("OMP_NUM_THREADS", "1")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    noise = 0
    last_progress = 0.0
    with subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env
    ) as proc:
        assert proc.stdout is not None
        pending = b""
        while chunk := proc.stdout.read1(65536):
            pieces = _SPLIT.split(pending + chunk)
            pending = pieces.pop()  # an unfinished line waits for more output
            for text, end in zip(pieces[::2], pieces[1::2], strict=True):
                line = text.decode("utf-8", errors="replace").rstrip()
                if not line:
                    continue
                if NOISE.search(line):
                    noise += 1
                    continue
                now = time.monotonic()
                if end == b"\r":  # a progress bar redraw: show it now and then
                    if now - last_progress < PROGRESS_EVERY_S:
                        continue
                    last_progress = now
                tail.append(line)
                log.info("%s%s", INDENT, line)
        if line := pending.decode("utf-8", errors="replace").rstrip():
            tail.append(line)
            log.info("%s%s", INDENT, line)
        code = proc.wait()
    _report_noise(noise)
    if code != 0:
        raise CommandError(command, code, tail)
    return list(tail)


@contextlib.contextmanager
def filtered_c_stderr() -> Iterator[None]:
    """Hold back what C libraries write to file descriptor 2 inside the block, drop NOISE.

    The demo's in-process decoding (the features stage) would otherwise print libmpg123's
    per-frame notes straight to the terminal; other lines are passed on afterwards.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode("utf-8", errors="replace").splitlines()
            kept = [line for line in lines if not NOISE.search(line)]
            for line in kept:
                print(line, file=sys.stderr)
            _report_noise(len(lines) - len(kept))


def _report_noise(count: int) -> None:
    """Say how many NOISE lines were held back, if any."""
    if count:
        log.info("%s(%d harmless libmpg123 decoder warnings not shown)", INDENT, count)
