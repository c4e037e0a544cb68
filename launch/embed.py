r"""Write one embedding per track for a folder, an s3:// prefix or a shard set (DESIGN §8, §11).

Commands:
    python launch/embed.py --encoder shards/demo/encoder --input shards/demo/corpus \
        --output runs/emb
    python launch/embed.py --encoder s3://bucket/encoder --input s3://bucket/music/ \
        --output s3://bucket/emb
    # a shard set: one row per stored sample (its feat.npy), no audio decoding
    python launch/embed.py --encoder out/encoder-base --input shards/demo/shards \
        --output runs/emb_shards

Writes OUTPUT/embeddings.npy (float32, N x 2*hidden: mean and standard deviation over time),
OUTPUT/index.csv (row,path,key,segment,frames) and, when some input could not be embedded,
OUTPUT/rejects.jsonl. `--set pooling=mean` keeps the mean only (N x hidden); `--set layer=0`
pools the input embedding instead of the last layer; `--set device=cuda` runs on a GPU.
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.cli import EXPECTED_ERRORS, add_config_arguments, config_from_args, fail, make_parser
from musicoder.downstream import EmbedConfig


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    add_config_arguments(parser)
    parser.add_argument(
        "--encoder", help="export dir, or a .safetensors path with config.json beside it"
    )
    parser.add_argument(
        "--input", help="audio folder, s3:// prefix, audio file, or shard set (manifest.json)"
    )
    parser.add_argument("--output", help="output folder (local path or s3:// prefix)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(
            EmbedConfig, args, {"encoder": args.encoder, "input": args.input, "output": args.output}
        )
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)

    from musicoder.downstream import embed_inputs

    try:
        summary = embed_inputs(cfg)
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    print(
        f"embedded {summary['embedded']} {summary['kind']} items ({summary['rejected']} rejected), "
        f"dim {summary['dim']}, to {summary['output']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
