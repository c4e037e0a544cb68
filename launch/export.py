"""Export a pre-training checkpoint as a standalone encoder (DESIGN §7, §11).

Command:
    python launch/export.py runs/base out/encoder-base
    python launch/export.py runs/base/checkpoints/global_step5000 out/encoder-5k

CHECKPOINT_DIR is a run dir, its `checkpoints/` dir or one tag dir (latest by default); works
for every ZeRO stage (DeepSpeed's consolidated fp32 weights). Writes
OUT_DIR/encoder.safetensors and OUT_DIR/config.json (model config, preset, normalization stats).
"""

import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from musicoder.cli import EXPECTED_ERRORS, fail, make_parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("checkpoint_dir", help="run dir, its checkpoints/ dir, or one tag dir")
    parser.add_argument("out_dir", help="output folder (local path or s3:// prefix)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from musicoder.training.checkpoint import export_encoder

    try:
        tag = export_encoder(args.checkpoint_dir, args.out_dir)
    except EXPECTED_ERRORS as exc:
        fail(parser, exc)
    print(f"exported {tag} to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
