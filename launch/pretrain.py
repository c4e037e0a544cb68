r"""Pre-train MusiCoder with DeepSpeed (DESIGN §7). Thin CLI around `musicoder.training.train.run`.

Commands:
    # one process (CPU or one GPU), no launcher needed
    python launch/pretrain.py --config configs/pretrain/tiny-cpu.yaml \
        --deepspeed configs/deepspeed/zero2.json --set data.manifest=shards/

    # N GPUs (or N CPU processes on gloo) on one machine
    deepspeed --num_gpus N launch/pretrain.py --config configs/pretrain/base.yaml \
        --deepspeed configs/deepspeed/zero2.json --set data.manifest=s3://bucket/shards \
        --set train.output_dir=runs/base --set train.max_steps=100000 --set train.save_every=1000

    # a weighted mixture of shard sets or views instead of one data.manifest
    python launch/pretrain.py --config configs/pretrain/tiny-cpu.yaml \
        --deepspeed configs/deepspeed/zero2.json \
        --set 'data.sources=[{uri: shards/a, weight: 1}, {uri: s3://bucket/b, weight: 3}]'

    # several nodes: a hostfile (or SLURM srun with --no_ssh --node_rank), same arguments
    deepspeed --hostfile H launch/pretrain.py --config configs/pretrain/large.yaml \
        --deepspeed configs/deepspeed/zero3.json --resume auto

`--resume auto` continues from the latest checkpoint in train.output_dir (converting it to a
universal checkpoint when the world size changed). SIGTERM/SIGINT to the ranks: all stop at the
same step, save one checkpoint and exit 0.
"""

import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.cli import EXPECTED_ERRORS, add_config_arguments, config_from_args, fail, make_parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_config_arguments(parser)
    parser.add_argument(
        "--deepspeed",
        required=True,
        metavar="PATH",
        help="DeepSpeed JSON (ZeRO stage, offload, clipping, optimizer type)",
    )
    parser.add_argument(
        "--resume",
        choices=["auto"],
        default=None,
        help="continue from the latest checkpoint in train.output_dir",
    )
    parser.add_argument("--manifest", help="alias for data.manifest")
    parser.add_argument("--output-dir", help="alias for train.output_dir")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO if rank == "0" else logging.WARNING,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )

    from musicoder.training.config import PretrainConfig
    from musicoder.data.stream import DamagedShardsError, error_line
    from musicoder.storage import StorageUnavailableError
    from musicoder.training.train import check_inputs, default_single_process_env, run

    try:
        cfg = config_from_args(
            PretrainConfig,
            args,
            flags={"data.manifest": args.manifest, "train.output_dir": args.output_dir},
        )
        check_inputs(cfg, args.deepspeed, args.resume)  # every rank checks; rank 0 prints it
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    default_single_process_env()
    try:
        state = run(cfg, deepspeed_config=args.deepspeed, resume=args.resume)
    except (DamagedShardsError, StorageUnavailableError) as exc:  # one line, every rank exits 2
        fail(parser, error_line(exc))
    logging.getLogger("pretrain").info(
        "done at step %d (%d samples)", state.step, state.samples_seen
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
