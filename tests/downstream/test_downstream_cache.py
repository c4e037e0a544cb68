"""`track_features`: long tracks are featurized block by block, on the whole track's frame grid,
with the same features as whole-track extraction away from block edges."""

from __future__ import annotations

import pytest
import torch
from fixtures_downstream import write_clip

from musicoder.audio import load_audio
from musicoder.downstream import cache
from musicoder.features import extract_features, num_frames

PRESET = "musicoder324"
HOP = 1024
BLOCK = 128  # frames: ~5.9 s blocks, so a 20 s track spans four


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("long") / "long.wav", hz=440, seconds=20.0)


def test_blocks_follow_the_whole_track_grid_and_match_away_from_edges(long_clip, monkeypatch):
    whole = extract_features(load_audio(str(long_clip)), PRESET)
    lengths = []

    def recording(waveform, preset):
        lengths.append(waveform.shape[-1])
        return extract_features(waveform, preset)

    monkeypatch.setattr(cache, "extract_features", recording)
    blocks = cache.track_features(str(long_clip), PRESET, block_frames=BLOCK)
    assert blocks.shape == whole.shape and blocks.dtype == torch.float16
    assert len(lengths) == 4 and max(lengths) == BLOCK * HOP  # never more than one block at once
    assert blocks.shape[0] == num_frames(round(20.0 * 22050), PRESET)
    frame = torch.arange(whole.shape[0])
    edge = torch.minimum(frame % BLOCK, BLOCK - frame % BLOCK)
    far = (edge >= 24) & (frame < 3 * BLOCK)  # >= 1.1 s from every block edge (CQT ~0.5 s)
    torch.testing.assert_close(blocks[far].float(), whole[far].float(), atol=0.05, rtol=0.01)
    near = ~far & (frame < 3 * BLOCK)
    assert (blocks[near].float() - whole[near].float()).abs().max() > 0.05  # edges do differ


def test_a_track_shorter_than_a_block_is_featurized_whole(long_clip):
    whole = extract_features(load_audio(str(long_clip)), PRESET)
    torch.testing.assert_close(cache.track_features(str(long_clip), PRESET), whole, rtol=0, atol=0)
    capped = cache.track_features(str(long_clip), PRESET, max_seconds=5.0, block_frames=BLOCK)
    assert capped.shape[0] == num_frames(5 * 22050, PRESET)
