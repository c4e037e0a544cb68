"""Task parsers (generic CSV, MagnaTagATune, GTZAN folder) on small fixture layouts, bad rows
included: every left-out row must appear as a counted skip with its reason."""

from __future__ import annotations

import collections
import pathlib

import pytest

from musicoder.config import load_config
from musicoder.downstream import TaskConfig
from musicoder.downstream.tasks import load_task, stratified_split

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs" / "tasks"


def touch(root: pathlib.Path, *names: str) -> None:
    """Parsers only check existence, so placeholder bytes are enough here."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"RIFF")


def reasons(data) -> dict[str, str]:
    return {s.where.split(" ")[0].rsplit(":", 1)[-1]: s.reason for s in data.skipped}


def test_every_task_config_loads():
    names = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    assert {"gtzan", "mtt_top50", "demo_genre", "demo_tags"} <= set(names)
    for path in CONFIGS.glob("*.yaml"):
        cfg = load_config(TaskConfig, [str(path)])
        assert cfg.name == path.stem and cfg.path


def test_csv_genre_keeps_good_rows_and_counts_each_bad_one(tmp_path):
    touch(tmp_path, "a/1.wav", "a/2.wav", "b/3.wav", "b/4.wav", "b/5.wav", "c/6.wav")
    touch(tmp_path, "d/7.wav", "d/8.wav")
    (tmp_path / "labels.csv").write_text(
        "path,split,label,tags\n"
        "a/1.wav,train,rock,\n"  # line 2
        "b/3.wav,train,jazz,\n"  # 3
        "a/2.wav,test,rock,\n"  # 4
        "b/4.wav,valid,jazz,\n"  # 5
        "gone.wav,train,rock,\n"  # 6 missing file
        "b/5.wav,test, ,\n"  # 7 empty label
        "c/6.wav,dev,rock,\n"  # 8 unknown split
        "../x.wav,train,rock,\n"  # 9 relative to the CSV's folder: missing
        f"{tmp_path}/d/7.wav,valid,jazz,\n"  # 10 absolute
        "a/1.wav,test,rock,\n"  # 11 duplicate (train/test leak)
        ",train,rock,\n"  # 12 empty path
        f"file://{tmp_path}/d/8.wav,test,rock,\n"  # 13 a URI
    )
    data = load_task(TaskConfig(name="t", kind="genre", path=str(tmp_path / "labels.csv")))
    assert data.classes == ["jazz", "rock"]
    assert [(pathlib.Path(t.uri).name, t.split, t.targets) for t in data.tracks] == [
        ("2.wav", "test", (1,)),
        ("8.wav", "test", (1,)),
        ("1.wav", "train", (1,)),
        ("3.wav", "train", (0,)),
        ("4.wav", "valid", (0,)),
        ("7.wav", "valid", (0,)),
    ]
    got = reasons(data)
    assert got["6"] == got["9"] == "file not found"
    assert got["7"] == "empty label"
    assert got["8"].startswith("unknown split 'dev'")
    assert got["11"] == "duplicate of an earlier row"
    assert got["12"] == "empty path"
    assert data.counts() == {"train": 2, "valid": 2, "test": 2, "skipped": 6}


def test_csv_without_usable_rows_counts_the_reasons_and_lists_them(tmp_path):
    rows = "".join(f"/data/gone/{i}.wav,{'train' if i % 2 else 'test'},rock,\n" for i in range(500))
    (tmp_path / "labels.csv").write_text("path,split,label,tags\n" + rows)
    listed = tmp_path / "out" / "skipped.csv"
    cfg = TaskConfig(name="t", kind="genre", path=str(tmp_path / "labels.csv"))
    with pytest.raises(ValueError) as error:
        load_task(cfg, skip_list=str(listed))
    assert str(error.value) == (
        f"{tmp_path / 'labels.csv'}: task t has no train tracks: "
        f"500 of 500 rows skipped: 500 file not found; listed in {listed}"
    )
    assert len(listed.read_text().splitlines()) == 501


def test_csv_tagging_vocabulary_and_top_k(tmp_path):
    touch(tmp_path, *(f"{i}.wav" for i in range(6)))
    (tmp_path / "labels.csv").write_text(
        "path,split,tags\n"
        "0.wav,train,drums;bass\n"  # 2
        "1.wav,train,drums ; piano\n"  # 3
        "2.wav,valid,drums;kazoo\n"  # 4  kazoo not in classes
        "3.wav,test,bass\n"  # 5
        "4.wav,test,kazoo\n"  # 6  only unknown tags
        "5.wav,test,;\n"  # 7  empty tags
    )
    csv_path = str(tmp_path / "labels.csv")
    fixed = load_task(TaskConfig(kind="tagging", path=csv_path, classes=["bass", "drums", "piano"]))
    assert fixed.classes == ["bass", "drums", "piano"]
    by_name = {pathlib.Path(t.uri).name: t.targets for t in fixed.tracks}
    assert by_name == {"0.wav": (0, 1), "1.wav": (1, 2), "2.wav": (1,), "3.wav": (0,)}
    got = reasons(fixed)
    assert got == {
        "4": "dropped unknown tags: kazoo",
        "6": "only unknown tags: kazoo",
        "7": "empty tags",
    }

    top = load_task(TaskConfig(kind="tagging", path=csv_path, top_k=2))
    assert top.classes == ["drums", "bass"]  # by count (3, 2), ties by name
    assert "no tags among the top 2" in reasons(top).values()  # 4.wav: kazoo only


def test_csv_structural_errors_name_the_file(tmp_path):
    (tmp_path / "labels.csv").write_text("path,split,label\nx.wav,train,rock\n")
    with pytest.raises(ValueError, match=r"labels\.csv: missing column 'tags'"):
        load_task(TaskConfig(kind="tagging", path=str(tmp_path / "labels.csv")))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_task(TaskConfig(path=str(tmp_path / "nope.csv")))
    touch(tmp_path, "x.wav")
    with pytest.raises(ValueError, match="no test tracks"):
        load_task(TaskConfig(path=str(tmp_path / "labels.csv")))


def test_wrong_kind_of_path_is_a_one_line_error(tmp_path):
    """Regression: a gtzan path that is a file, or a CSV path that is a folder, crashed with a
    raw NotADirectoryError / IsADirectoryError traceback instead of the CLI's one-line error."""
    touch(tmp_path, "song.wav")
    with pytest.raises(ValueError, match=r"song\.wav: not a directory \(task t, source gtzan\)"):
        load_task(TaskConfig(name="t", source="gtzan", path=str(tmp_path / "song.wav")))
    with pytest.raises(ValueError, match=r": is a directory \(task t, source csv\)"):
        load_task(TaskConfig(name="t", path=str(tmp_path)))


def test_missing_valid_split_is_carved_from_train(tmp_path):
    touch(tmp_path, *(f"{g}{i}.wav" for g in "ab" for i in range(10)))
    rows = [f"{g}{i}.wav,{'test' if i == 9 else 'train'},{g}" for g in "ab" for i in range(10)]
    (tmp_path / "labels.csv").write_text("path,split,label\n" + "\n".join(rows) + "\n")
    data = load_task(TaskConfig(path=str(tmp_path / "labels.csv"), valid_fraction=0.2))
    valid = data.split("valid")
    assert len(valid) == 4 and collections.Counter(t.targets for t in valid) == {(0,): 2, (1,): 2}
    assert data.counts()["test"] == 2 and data.counts()["train"] == 14


def write_mtt(root: pathlib.Path) -> pathlib.Path:
    tags = ["guitar", "piano", "rock", "quiet"]
    rows = [  # clip_id, guitar, piano, rock, quiet, mp3_path
        ("1", "1", "0", "1", "0", "0/a.mp3"),
        ("2", "1", "1", "0", "0", "b/b.mp3"),
        ("3", "0", "1", "1", "0", "c/c.mp3"),
        ("4", "1", "0", "0", "0", "d/d.mp3"),
        ("5", "0", "1", "0", "0", "f/e.mp3"),
        ("6", "0", "0", "0", "1", "e/quiet.mp3"),  # no top-3 tag
        ("7", "1", "0", "0", "0", "e/missing.mp3"),  # file absent
        ("8", "1", "0", "0", "0", "g/h.mp3"),  # not a 0-f folder
        ("9", "1", "0", "yes", "0", "1/i.mp3"),  # bad value
        ("10", "1", "0", "1", "0"),  # short row
    ]
    touch(
        root,
        "0/a.mp3",
        "b/b.mp3",
        "c/c.mp3",
        "d/d.mp3",
        "f/e.mp3",
        "e/quiet.mp3",
        "g/h.mp3",
        "1/i.mp3",
    )
    quote = lambda values: "\t".join(f'"{v}"' for v in values)  # noqa: E731 (the real file quotes)
    text = "\n".join([quote(["clip_id", *tags, "mp3_path"]), *(quote(r) for r in rows)]) + "\n"
    (root / "annotations_final.csv").write_text(text)
    return root / "annotations_final.csv"


def test_mtt_directory_split_top_k_and_bad_rows(tmp_path):
    path = write_mtt(tmp_path)
    data = load_task(TaskConfig(name="mtt", kind="tagging", source="mtt", path=str(path), top_k=3))
    assert data.classes == ["guitar", "piano", "rock"]  # counts 3, 3, 2 (tie by name)
    splits = {pathlib.Path(t.uri).name: (t.split, t.targets) for t in data.tracks}
    assert splits == {
        "a.mp3": ("train", (0, 2)),
        "b.mp3": ("train", (0, 1)),
        "c.mp3": ("valid", (1, 2)),
        "d.mp3": ("test", (0,)),
        "e.mp3": ("test", (1,)),
    }
    got = reasons(data)
    assert got["7"] == "no tags among the top 3"
    assert got["8"] == "file not found"
    assert "is not <0-f>/<file>" in got["9"]
    assert got["10"] == "tag value other than 0 or 1"
    assert got["11"] == "expected 6 columns, got 5"
    assert len(data.skipped) == 5


def test_mtt_rejects_other_layouts(tmp_path):
    (tmp_path / "a.csv").write_text("path\tsplit\n")
    with pytest.raises(ValueError, match="not a MagnaTagATune annotations file"):
        load_task(TaskConfig(kind="tagging", source="mtt", path=str(tmp_path / "a.csv")))


def write_gtzan(root: pathlib.Path) -> pathlib.Path:
    genres = root / "genres"
    touch(genres, *(f"{g}/{g}.{i:05d}.au" for g in ("blues", "jazz", "rock") for i in range(10)))
    touch(genres, "README.au")  # not in a genre folder
    (genres / "jazz" / "empty.au").write_bytes(b"")
    return genres


def test_gtzan_stratified_split_is_seeded_and_balanced(tmp_path):
    genres = write_gtzan(tmp_path)
    cfg = TaskConfig(source="gtzan", path=str(genres), valid_fraction=0.2, test_fraction=0.2)
    data = load_task(cfg)
    assert data.classes == ["blues", "jazz", "rock"]
    per = collections.Counter((t.split, t.targets) for t in data.tracks)
    assert all(
        per[(s, (c,))] == n for c in range(3) for s, n in (("train", 6), ("valid", 2), ("test", 2))
    )
    assert sorted(s.reason for s in data.skipped) == ["empty file", "not inside a genre folder"]
    assert load_task(cfg).tracks == data.tracks
    other = load_task(TaskConfig(source="gtzan", path=str(genres), split_seed=1))
    assert {t.uri for t in other.split("test")} != {t.uri for t in data.split("test")}


def test_gtzan_split_files_match_across_extensions(tmp_path):
    genres = write_gtzan(tmp_path)
    lists = {
        "train": ["blues/blues.00000.wav", "jazz/jazz.00001.wav"],
        "valid": ["rock/rock.00002.wav"],
        "test": ["rock/rock.00003.wav", "blues/blues.00099.wav"],
    }  # 00099 does not exist
    for split, lines in lists.items():
        (tmp_path / f"{split}_filtered.txt").write_text("\n".join(lines) + "\n")
    cfg = TaskConfig(
        source="gtzan", path=str(genres), split_file=str(tmp_path / "{split}_filtered.txt")
    )
    data = load_task(cfg)
    assert {(pathlib.Path(t.uri).name, t.split) for t in data.tracks} == {
        ("blues.00000.au", "train"),
        ("jazz.00001.au", "train"),
        ("rock.00002.au", "valid"),
        ("rock.00003.au", "test"),
    }
    counts = collections.Counter(s.reason for s in data.skipped)
    assert counts["not listed in the split file"] == 30 - 4
    assert counts["listed track 'blues/blues.00099' not found"] == 1

    single = tmp_path / "split.txt"
    single.write_text(
        "# path split\nblues/blues.00000.wav train\nrock/rock.00003.au test\n"
        "jazz/jazz.00004.au dev\n"
    )
    with pytest.raises(ValueError, match=r"split\.txt:4: unknown split 'dev'"):
        load_task(TaskConfig(source="gtzan", path=str(genres), split_file=str(single)))


@pytest.mark.parametrize("seed", range(5))
def test_stratified_split_invariants(seed):
    keys = [f"k{i:03d}" for i in range(53)]
    strata = [f"s{i % 4}" for i in range(53)]
    splits = stratified_split(keys, strata, valid_fraction=0.1, test_fraction=0.2, seed=seed)
    for stratum in set(strata):
        members = [s for s, st in zip(splits, strata, strict=True) if st == stratum]
        n = len(members)
        assert members.count("test") == round(0.2 * n)
        assert members.count("valid") == round(0.1 * n)
    # Order of the input does not matter, only the key set and the seed.
    shuffled = list(reversed(range(53)))
    again = stratified_split(
        [keys[i] for i in shuffled],
        [strata[i] for i in shuffled],
        valid_fraction=0.1,
        test_fraction=0.2,
        seed=seed,
    )
    assert [again[shuffled.index(i)] for i in range(53)] == splits


def test_task_config_rejects_inconsistent_kinds():
    with pytest.raises(ValueError, match="source mtt needs kind tagging"):
        TaskConfig(source="mtt", kind="genre")
    with pytest.raises(ValueError, match="valid_fraction"):
        TaskConfig(valid_fraction=0.6, test_fraction=0.5)
