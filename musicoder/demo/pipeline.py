"""`run_demo`: run the stages in order, log progress, stop at the first failure naming its stage."""

from __future__ import annotations

import logging
import os
import time

from musicoder.config import save_config
from musicoder.demo.config import CONFIG_NAME, DemoConfig
from musicoder.demo.stages import STAGES
from musicoder.demo.state import DemoStageError, DemoState, Stage

log = logging.getLogger(__name__)


def run_demo(cfg: DemoConfig, stages: tuple[Stage, ...] = STAGES) -> DemoState:
    """Run the demo stages in order.

    Args:
        cfg: demo parameters; saved as ``<out>/demo_config.yaml`` first.
        stages: the stages to run (default: all of :data:`musicoder.demo.stages.STAGES`).

    Returns:
        The state the stages filled in.

    Raises:
        DemoStageError: the first stage that failed, naming it and the cause (and, for a
            command, the tail of its output).
    """
    state = DemoState()
    os.makedirs(cfg.path(), exist_ok=True)
    save_config(cfg, cfg.path(CONFIG_NAME))
    for number, stage in enumerate(stages, start=1):
        log.info("[%d/%d] %s: %s", number, len(stages), stage.name, stage.description)
        started = time.perf_counter()
        try:
            result = stage.run(cfg, state)
        except Exception as e:  # any failure stops the demo, naming the stage
            raise DemoStageError(stage.name, e) from e
        state.timings[stage.name] = time.perf_counter() - started
        log.info(
            "[%d/%d] %s: done in %.1f s: %s",
            number,
            len(stages),
            stage.name,
            state.timings[stage.name],
            result,
        )
    return state
