"""`embed_inputs` / launch/embed.py: folders, shard sets and s3:// prefixes; every input either
gets a row or a reject with its reason, and rows round-trip to `load_encoder().embed`."""

from __future__ import annotations

import csv
import io
import json
import tarfile

import numpy as np
import pytest
import soundfile as sf
import torch
from fixtures_downstream import write_clip
from fixtures_training import write_shard_set, write_view

import musicoder
from musicoder import storage
from musicoder.audio import load_audio
from musicoder.downstream import EmbedConfig, embed_inputs


def read_outputs(out: str) -> tuple[np.ndarray, list[dict], list[dict]]:
    vectors = np.load(
        io.BytesIO(storage.read_bytes(storage.join(out, "embeddings.npy"))), allow_pickle=False
    )
    index = list(csv.DictReader(io.StringIO(storage.read_text(storage.join(out, "index.csv")))))
    rejects_uri = storage.join(out, "rejects.jsonl")
    rejects = (
        [json.loads(line) for line in storage.read_text(rejects_uri).splitlines()]
        if storage.exists(rejects_uri)
        else []
    )
    return vectors, index, rejects


def test_folder_round_trip_with_rejects(tmp_path, tiny_export):
    music = tmp_path / "music"
    write_clip(music / "a.wav", hz=300, seconds=2.5)
    write_clip(music / "sub" / "c.wav", hz=900, seconds=3.0, seed=2)
    long = write_clip(tmp_path / "tmp.wav", hz=600, seconds=7.0, seed=1)  # > window: 4 chunks
    sf.write(music / "b.flac", sf.read(long)[0], 22050)
    (music / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 8)
    sf.write(music / "silent.wav", np.zeros(22050 * 3, dtype=np.float32), 22050)
    (music / "empty.mp3").write_bytes(b"")
    (music / "notes.txt").write_text("not audio, not listed")

    summary = embed_inputs(
        EmbedConfig(
            encoder=str(tiny_export), input=str(music), output=str(tmp_path / "out"), device="cpu"
        )
    )
    assert (summary["embedded"], summary["rejected"], summary["kind"]) == (3, 3, "audio")
    vectors, index, rejects = read_outputs(str(tmp_path / "out"))
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32  # mean and std of 128
    assert [r["path"].rsplit("/", 2)[-1] for r in index] == ["a.wav", "b.flac", "c.wav"]
    assert {r["uri"].rsplit("/", 1)[-1]: r["error"] for r in rejects} == {
        "empty.mp3": "",
        "corrupt.wav": "UnreadableAudioError",
        "silent.wav": "SilentAudioError",
    }
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    for row, vector in zip(index, vectors, strict=True):
        expected = encoder.embed(load_audio(row["path"]))
        np.testing.assert_allclose(vector, expected.numpy(), rtol=1e-5, atol=1e-5)
    assert int(index[1]["frames"]) > encoder.window()  # the long file really was chunked


def test_shard_set_embeds_every_sample(tmp_path, tiny_export):
    shards = write_shard_set(tmp_path / "shards", [3, 2], [2], frames=(30, 100), seed=3)
    summary = embed_inputs(
        EmbedConfig(
            encoder=str(tiny_export),
            input=str(shards / "manifest.json"),
            output=str(tmp_path / "out"),
            device="cpu",
        )
    )
    assert (summary["kind"], summary["embedded"], summary["rejected"]) == ("shards", 7, 0)
    vectors, index, _ = read_outputs(str(tmp_path / "out"))
    keys = [
        k
        for name in ("shard-000000", "shard-000001", "val-000000")
        for k in json.loads((shards / f"{name}.json").read_text())["keys"]
    ]
    assert [r["key"] for r in index] == keys
    assert [int(r["segment"]) for r in index] == [0, 1, 2, 0, 1, 0, 1]
    encoder = musicoder.load_encoder(str(tiny_export), device="cpu")
    with tarfile.open(shards / "shard-000000.tar") as tar:
        data = tar.extractfile(f"{keys[0]}.feat.npy").read()
    feat = np.load(io.BytesIO(data), allow_pickle=False)
    expected = encoder.embed_features(torch.from_numpy(feat))
    np.testing.assert_allclose(vectors[0], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_view_embeds_the_samples_it_keeps(tmp_path, tiny_export):
    shards = write_shard_set(tmp_path / "shards", [3, 2], [2], frames=(30, 60), seed=4)
    keys = {
        name: json.loads((shards / f"{name}.json").read_text())["keys"]
        for name in ("shard-000000", "shard-000001", "val-000000")
    }
    dropped = {"shard-000000.tar": keys["shard-000000"][1:2], "val-000000.tar": keys["val-000000"]}
    write_view(tmp_path / "clean" / "view.json", [(shards, dropped)])
    summary = embed_inputs(
        EmbedConfig(
            encoder=str(tiny_export),
            input=str(tmp_path / "clean"),  # the view's folder, as curate writes it
            output=str(tmp_path / "out"),
            device="cpu",
        )
    )
    assert (summary["kind"], summary["embedded"], summary["rejected"]) == ("shards", 4, 0)
    _, index, _ = read_outputs(str(tmp_path / "out"))
    kept = [k for name in keys for k in keys[name] if k not in sum(dropped.values(), [])]
    assert [r["key"] for r in index] == kept


def test_shard_set_with_another_preset_is_refused(tmp_path, tiny_export):
    shards = write_shard_set(tmp_path / "shards", [1], [1], preset="logmel128")
    with pytest.raises(ValueError, match="preset 'logmel128'"):
        embed_inputs(
            EmbedConfig(
                encoder=str(tiny_export),
                input=str(shards),
                output=str(tmp_path / "out"),
                device="cpu",
            )
        )


def test_single_non_audio_file_is_refused(tmp_path, tiny_export):
    """Regression: an input file of another extension (.m4a) crashed while being listed."""
    (tmp_path / "song.m4a").write_bytes(b"x" * 100)
    with pytest.raises(ValueError, match=r"song\.m4a: not a folder, a shard set or an audio file"):
        embed_inputs(
            EmbedConfig(
                encoder=str(tiny_export),
                input=str(tmp_path / "song.m4a"),
                output=str(tmp_path / "out"),
                device="cpu",
            )
        )


@pytest.mark.integration
def test_s3_prefix(s3_env, tmp_path, tiny_export):
    for i, hz in enumerate((300, 800)):
        clip = write_clip(tmp_path / f"{i}.wav", hz=hz, seed=i)
        storage.write_bytes(f"{s3_env}/music/{i}.wav", clip.read_bytes())
    storage.write_bytes(f"{s3_env}/musicals/x.wav", (tmp_path / "0.wav").read_bytes())  # not under
    summary = embed_inputs(
        EmbedConfig(
            encoder=str(tiny_export),
            input=f"{s3_env}/music",
            output=f"{s3_env}/emb",
            device="cpu",
            pooling="mean",
        )
    )
    assert summary["embedded"] == 2 and summary["dim"] == 128
    vectors, index, rejects = read_outputs(f"{s3_env}/emb")
    assert [r["path"] for r in index] == [f"{s3_env}/music/0.wav", f"{s3_env}/music/1.wav"]
    assert vectors.shape == (2, 128) and not rejects
