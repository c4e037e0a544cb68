r"""Probe or fine-tune an exported encoder on a genre or tagging task (DESIGN §8, §11).

Commands:
    # linear probe on the demo corpus (after `make demo`), with both baselines
    python launch/finetune.py --encoder shards/demo/encoder --task configs/tasks/demo_genre.yaml \
        --baselines --output runs/demo_genre

    # fine-tune the whole model on GTZAN (encoder at train.encoder_lr) on a GPU
    python launch/finetune.py --encoder out/encoder-base/encoder.safetensors \
        --task configs/tasks/gtzan.yaml --mode finetune --output runs/gtzan_ft --set device=cuda

    # MagnaTagATune top-50, 10-second chunks, data on S3
    python launch/finetune.py --encoder s3://bucket/encoder --task configs/tasks/mtt_top50.yaml \
        --output runs/mtt --set task.path=s3://bucket/mtt/annotations_final.csv \
        --set train.chunk_seconds=10

Writes OUTPUT/metrics.json (also printed as a table), predictions.csv, skipped.csv, config.yaml
and TensorBoard events under OUTPUT/tensorboard/. Features are cached in `cache_dir`.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.cli import EXPECTED_ERRORS, add_config_arguments, config_from_args, fail, make_parser
from musicoder.downstream import FinetuneConfig
from musicoder.downstream.config import task_flags


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_config_arguments(parser)
    parser.add_argument("--encoder", help="export dir, or .safetensors with config.json beside")
    parser.add_argument("--task", help="task YAML (configs/tasks/*.yaml); fills the task.* keys")
    parser.add_argument("--mode", choices=["probe", "finetune"], help="alias for mode")
    parser.add_argument(
        "--baselines",
        action="store_true",
        default=None,
        help="also run the random-init and handcrafted baselines",
    )
    parser.add_argument("--output", help="alias for output (run folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    flags = {
        "encoder": args.encoder,
        "mode": args.mode,
        "baselines": args.baselines,
        "output": args.output,
    }
    try:
        cfg = config_from_args(FinetuneConfig, args, {**flags, **task_flags(args.task)})
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)

    from musicoder.downstream import run
    from musicoder.downstream.metrics import format_table

    try:
        metrics = run(cfg)
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    print(f"task {metrics['task']} ({metrics['kind']}, {metrics['mode']}): {metrics['tracks']}")
    print(format_table({"pretrained": metrics["test"], **metrics["baselines"]}))
    print(f"wrote {cfg.output}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
