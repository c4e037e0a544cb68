"""Shard audio collections into WebDataset tars + manifest (DESIGN §5, §11); thin CLI over `musicoder.sharding.run`.

Commands:
    # on a Ray cluster (paths must be absolute on a shared filesystem, or s3://; S3 credentials
    # reach the workers through the environment of `ray start`)
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python launch/shard.py --input /abs/audio --output s3://bucket/prefix

    # one machine: starts a local Ray when RAY_ADDRESS is not set
    python launch/shard.py --input ~/music --output shards/mycorpus

Examples (--input: a folder, an s3:// prefix, an audio file or a .txt/.csv list of URIs):
    python launch/shard.py --input ~/music --input s3://raw/more/ --input list.csv --output shards/x
    python launch/shard.py --input ~/music --output shards/x --segment-seconds 10 --dry-run
    python launch/shard.py --config configs/shard/default.yaml --set max_reject_fraction=0.2 ...
Re-running the same command resumes (only shards without an index are redone); a complete output
is left alone. Exit 0 with a summary line; 1 if shards failed (re-run to retry them); 2 for bad
arguments or an output holding a different plan (--overwrite); 3 for too many rejects.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.cli import (
    EXPECTED_ERRORS,
    add_config_arguments,
    add_config_flags,
    config_from_args,
    fail,
    flag_values,
    make_parser,
)
from musicoder.sharding import ShardJobConfig, run

# Explicit flags, each an alias for one config key (its argparse dest); None = not given.
CONFIG_FLAGS = {
    "--input": dict(dest="inputs", action="append", metavar="URI", help="repeatable; see Examples"),
    "--output": dict(dest="output", metavar="URI", help="output folder or s3:// prefix"),
    "--preset": dict(dest="preset", help="feature preset: musicoder324 (default) or logmel128"),
    "--segment-seconds": dict(
        dest="segment_seconds", type=float, metavar="S", help="per sample (30)"
    ),
    "--shard-size": dict(dest="shard_size_mb", type=float, metavar="MB", help="target MB (256)"),
    "--keep-audio": dict(
        dest="keep_audio", action="store_true", default=None, help="store FLAC too"
    ),
    "--seed": dict(dest="seed", type=int, help="file-order seed (default 0)"),
    "--val-fraction": dict(dest="val_fraction", type=float, metavar="F", help="held out (0.02)"),
    "--max-in-flight": dict(dest="max_in_flight", type=int, metavar="N", help="tasks (2 x CPUs)"),
    "--overwrite": dict(
        dest="overwrite",
        action="store_true",
        default=None,
        help="replace a different plan's output",
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_config_arguments(parser)
    add_config_flags(parser, CONFIG_FLAGS)
    parser.add_argument("--dry-run", action="store_true", help="list and plan only; write nothing")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags = flag_values(args, CONFIG_FLAGS)
    try:
        cfg = config_from_args(ShardJobConfig, args, flags)
        result = run(cfg, dry_run=args.dry_run, progress=not args.no_progress)
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    print(result.summary, flush=True)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
