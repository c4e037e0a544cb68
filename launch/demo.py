"""Run MusiCoder end to end on the embedded demo corpus. Thin CLI over `musicoder.demo`.

Commands:
    make demo                    # installs .venv when needed, then runs this script
    python launch/demo.py        # the same, in an existing environment

Examples:
    python launch/demo.py --tracks 60 --seconds 10 --steps 50    # a quick, smaller run
    python launch/demo.py --out /data/demo --seed 1              # another corpus, elsewhere
    python launch/demo.py --set crop_frames=128 --set shard_mb=8
    python launch/demo.py --config my_demo.yaml                  # keys of musicoder.demo.DemoConfig

Stages: corpus -> features -> shard (Ray) -> pretrain (DeepSpeed) -> export -> genre -> tags
probes. Each prints the command it runs and streams its output. A second run reuses what is
done and up to date. Exit 0 after the summary; 1 when a stage fails (the message names the
stage, after the last lines of its output); 2 for bad arguments.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.cli import EXPECTED_ERRORS, add_config_arguments, config_from_args, fail, make_parser
from musicoder.demo import DemoConfig, DemoStageError, format_summary, run_demo

FLAGS = {  # flag -> (config key, type, help)
    "--out": ("out", str, "output folder (default shards/demo)"),
    "--tracks": ("tracks", int, "demo corpus size (default 240, 6 genres)"),
    "--seconds": ("seconds", float, "seconds per track (default 30)"),
    "--seed": ("seed", int, "corpus and sharding seed (default 0)"),
    "--steps": ("steps", int, "pre-training steps (default 200)"),
}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_config_arguments(parser)
    for flag, (key, kind, text) in FLAGS.items():
        parser.add_argument(flag, dest=key, type=kind, help=text)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    try:
        cfg = config_from_args(
            DemoConfig, args, {key: getattr(args, key) for key, *_ in FLAGS.values()}
        )
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    try:
        state = run_demo(cfg)
    except DemoStageError as exc:
        if exc.tail:
            print("last output of the failing command:", *exc.tail, sep="\n    ", file=sys.stderr)
        print(f"demo stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    print(format_summary(cfg, state), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
