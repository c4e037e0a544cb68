"""The `make demo` pipeline on the embedded default, as a list of stages.

Each stage is a function ``(DemoConfig, DemoState) -> str`` that does one step, records what it
made in the shared :class:`DemoState` and returns a one-line result. :func:`run_demo` runs them
in order, logs progress, and turns any failure into a :class:`DemoStageError` naming the stage,
so the demo stops with one clear line. The stages (:mod:`musicoder.demo.stages`):

1. ``corpus``: render the procedural demo corpus (or reuse a complete one) under ``<out>/corpus``.
2. ``features``: decode a sample of its tracks (every format) and extract the model input, timed.
3. ``shard``: ``python launch/shard.py`` (a local Ray) into ``<out>/shards``.
4. ``pretrain``: ``python launch/pretrain.py`` (DeepSpeed, one process) into ``<out>/run``.
5. ``export``: ``python launch/export.py`` into ``<out>/encoder``.
6. ``genre``, 7. ``tags``: ``python launch/finetune.py --mode probe --baselines`` into
   ``<out>/genre`` and ``<out>/tags``.

:func:`format_summary` prints the results table and where everything is.
"""

from musicoder.demo.config import CONFIG_NAME, DemoConfig
from musicoder.demo.pipeline import run_demo
from musicoder.demo.report import format_summary, results_table
from musicoder.demo.stages import STAGES
from musicoder.demo.state import DemoStageError, DemoState, FeatureReport, Stage

__all__ = [
    "CONFIG_NAME",
    "STAGES",
    "DemoConfig",
    "DemoStageError",
    "DemoState",
    "FeatureReport",
    "Stage",
    "format_summary",
    "results_table",
    "run_demo",
]
