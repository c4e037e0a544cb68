r"""Curate shard sets into a view: drop duplicate recordings and bad audio without rewriting tars (DESIGN §11, §13).

Commands:
    python launch/curate.py --input shards/corpus --output shards/corpus-clean --dedup
    python launch/curate.py --input s3://corpus/v1 --dedup --max-silence 0.5 \
        --output s3://corpus/v1-clean
    # several shard sets into one view; duplicates are found across them too
    python launch/curate.py --input shards/a --input s3://b/shards --output shards/ab --dedup \
        --max-clipped 0.01 --min-loudness -50
    # on a Ray cluster (one process reads the indexes; paths absolute or s3://)
    ray job submit --working-dir . -- python launch/curate.py --input s3://corpus/v1 \
        --output s3://corpus/v1-clean --dedup
    # train on the view: wherever a manifest is accepted
    python launch/pretrain.py --config configs/pretrain/tiny-cpu.yaml \
        --set data.manifest=shards/corpus-clean/view.json ...

Reads only manifests and shard indexes (format v2). Writes OUTPUT/report.json (duplicate_groups:
source URIs per group, kept copy first; samples and hours removed per reason), then
OUTPUT/view.json. Re-running the same command leaves identical outputs untouched. Tuning:
--set match.max_bit_error=0.25, --set match.min_coverage=0.5 (see musicoder/curation/config.py).
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
from musicoder.curation import CurateConfig, run

# Explicit flags, each an alias for one config key (its argparse dest); None = not given.
CONFIG_FLAGS = {
    "--input": dict(dest="inputs", action="append", metavar="URI", help="shard set; repeatable"),
    "--output": dict(dest="output", metavar="URI", help="folder or s3:// prefix for the view"),
    "--dedup": dict(dest="dedup", action="store_true", default=None, help="drop duplicate files"),
    "--max-silence": dict(
        dest="max_silence",
        type=float,
        metavar="F",
        help="drop samples whose share of near-silent frames is above F (0-1)",
    ),
    "--max-clipped": dict(
        dest="max_clipped",
        type=float,
        metavar="F",
        help="drop samples whose share of clipped samples is above F (0-1)",
    ),
    "--min-loudness": dict(
        dest="min_loudness_dbfs",
        type=float,
        metavar="DBFS",
        help="drop samples quieter than this loudness (dBFS, e.g. -50)",
    ),
    "--work-dir": dict(
        dest="work_dir", metavar="DIR", help="local scratch for dedup (default: system temp)"
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_config_arguments(parser)
    add_config_flags(parser, CONFIG_FLAGS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags = flag_values(args, CONFIG_FLAGS)
    try:
        cfg = config_from_args(CurateConfig, args, flags)
        result = run(cfg, progress=not args.no_progress)
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    print(result.summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
