"""Tests for musicoder/training/checkpoint.py: pruning keeps the last complete tags; a torn tag
(a file missing or resized after its save) is skipped by resume and refused by export."""

from __future__ import annotations

import pytest

from musicoder.training import checkpoint


def _save(ckpt_dir, step: int, *, latest: bool = True) -> None:
    """A fake finished save: two rank files, the state sidecar, the file list, `latest`."""
    tag_dir = ckpt_dir / checkpoint.tag_for(step)
    tag_dir.mkdir(parents=True)
    for name in ("mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"):
        (tag_dir / name).write_bytes(b"x" * (100 + step))
    (tag_dir / checkpoint.STATE_FILE).write_text("{}")
    checkpoint.write_file_list(str(tag_dir))
    if latest:
        (ckpt_dir / checkpoint.LATEST).write_text(tag_dir.name)


def test_prune_keeps_last_complete_tags(tmp_path):
    for step in (4, 8, 12, 16):
        _save(tmp_path, step)
    (tmp_path / "global_step20").mkdir()  # a half-written save: `latest` still names 16
    (tmp_path / "global_step8_universal").mkdir()
    checkpoint.prune(str(tmp_path), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "global_step12",
        "global_step16",
        "latest",
    ]
    assert checkpoint.latest_tag(str(tmp_path)) == "global_step16"


def test_prune_counts_only_complete_tags(tmp_path):
    for step in (4, 8, 12):
        _save(tmp_path, step)
    (tmp_path / "global_step8" / checkpoint.FILE_LIST).unlink()  # torn: not a fallback
    checkpoint.prune(str(tmp_path), keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [
        "global_step12",
        "global_step4",
    ]


@pytest.mark.parametrize(
    ("tear", "reason"),
    [
        (lambda tag: (tag / "mp_rank_00_model_states.pt").write_bytes(b"x"), "is 1 bytes, 116"),
        (lambda tag: (tag / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink(), "is missing"),
        (lambda tag: (tag / checkpoint.FILE_LIST).unlink(), "did not finish"),
        (lambda tag: [p.unlink() for p in tag.iterdir()] and tag.rmdir(), "folder is missing"),
    ],
    ids=["truncated", "deleted", "no-file-list", "no-folder"],
)
def test_torn_newest_tag_falls_back_and_export_refuses_it(tmp_path, tear, reason):
    for step in (8, 12, 16):
        _save(tmp_path, step)
    assert checkpoint.complete_tag(str(tmp_path)) == ("global_step16", [])
    tear(tmp_path / "global_step16")
    tag, torn = checkpoint.complete_tag(str(tmp_path))
    assert tag == "global_step12"
    assert [name for name, _ in torn] == ["global_step16"] and reason in torn[0][1]
    for path in (tmp_path, tmp_path / "global_step16"):
        if path.exists():
            with pytest.raises(ValueError, match="global_step16: torn checkpoint, .*global_step12"):
                checkpoint.resolve_checkpoint(str(path))
    assert checkpoint.resolve_checkpoint(str(tmp_path / "global_step12"))[1] == "global_step12"


def test_no_complete_tag_is_an_error_and_no_latest_starts_fresh(tmp_path):
    assert checkpoint.complete_tag(str(tmp_path)) == (None, [])
    _save(tmp_path, 4, latest=False)  # saved, never published
    assert checkpoint.complete_tag(str(tmp_path)) == (None, [])
    _save(tmp_path, 8)
    assert checkpoint.complete_tag(str(tmp_path)) == ("global_step8", [])
    for step in (4, 8):
        (tmp_path / checkpoint.tag_for(step) / checkpoint.STATE_FILE).unlink()
    with pytest.raises(ValueError, match=r"no complete checkpoint \(global_step8: .*; global_st"):
        checkpoint.complete_tag(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        checkpoint.resolve_checkpoint(str(tmp_path / "elsewhere"))
