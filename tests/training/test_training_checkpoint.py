"""Tests for musicoder/training/checkpoint.py: pruning keeps the last complete tags."""

from __future__ import annotations

import pytest

from musicoder.training import checkpoint


def test_prune_keeps_last_complete_tags(tmp_path):
    for step in (4, 8, 12, 16, 20):
        (tmp_path / checkpoint.tag_for(step)).mkdir()
    (tmp_path / "global_step8_universal").mkdir()
    (tmp_path / checkpoint.LATEST).write_text("global_step16")  # 20 is a half-written save
    checkpoint.prune(str(tmp_path), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "global_step12",
        "global_step16",
        "latest",
    ]
    assert checkpoint.latest_tag(str(tmp_path)) == "global_step16"
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        checkpoint.resolve_checkpoint(str(tmp_path / "global_step12"))
