"""Run MusiCoder end to end on the embedded demo corpus. Thin CLI over `musicoder.demo`.

Commands:
    make demo                    # installs .venv when needed, then runs this script
    python launch/demo.py        # the same, in an existing environment

Examples:
    python launch/demo.py --tracks 60 --seconds 10            # a quick, smaller run
    python launch/demo.py --out /data/demo --seed 1           # another corpus, elsewhere
    python launch/demo.py --set feature_tracks=24 --set preset=logmel128
    python launch/demo.py --config my_demo.yaml               # keys of musicoder.demo.DemoConfig

Stages run in order and each prints its progress; a second run reuses what is complete (the
corpus under <out>/corpus). Exit 0 after the summary; 1 when a stage fails (the message names
the stage); 2 for bad arguments.
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.config import ConfigError, add_config_arguments, config_from_args  # noqa: E402
from musicoder.demo import DemoConfig, DemoStageError, format_summary, run_demo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser)
    parser.add_argument(
        "--out", metavar="URI", help="output folder or s3:// prefix (default shards/demo)"
    )
    parser.add_argument("--tracks", type=int, help="demo corpus size (default 240, 6 genres)")
    parser.add_argument("--seconds", type=float, help="seconds per track (default 30)")
    parser.add_argument("--seed", type=int, help="corpus seed (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    flags = {"out": args.out, "tracks": args.tracks, "seconds": args.seconds, "seed": args.seed}
    try:
        cfg = config_from_args(DemoConfig, args, flags)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    try:
        state = run_demo(cfg)
    except DemoStageError as exc:
        print(f"demo stopped: {exc}", file=sys.stderr, flush=True)
        return 1
    print(format_summary(cfg, state), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
