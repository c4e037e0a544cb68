"""Pure helpers of bench/science_kit.py: folds over whole groups, tags by sounding time, clip
placement, zip-member and register guards. No apt, no music21, no audio from the kit."""

import importlib.util
import sys
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath

import pytest

_PATH = Path(__file__).resolve().parents[1] / "bench" / "science_kit.py"
_SPEC = importlib.util.spec_from_file_location("science_kit", _PATH)
sk = importlib.util.module_from_spec(_SPEC)
sys.modules.setdefault("science_kit", sk)
_SPEC.loader.exec_module(sk)


def _strata(sizes: dict[str, int]) -> dict[str, str]:
    return {f"{c}/track{i:02d}": c for c, n in sizes.items() for i in range(n)}


@pytest.mark.parametrize("seed", range(8))
def test_fold_groups_spreads_every_stratum_evenly(seed):
    sizes = {"a": 10, "b": 16, "c": 26, "d": 46, "e": 7}
    strata = _strata(sizes)
    fold = sk.fold_groups(strata, 5, seed=seed)
    assert set(fold) == set(strata) and set(fold.values()) == set(range(5))
    per = Counter((strata[g], k) for g, k in fold.items())
    for c, n in sizes.items():  # each class in every fold, the folds within one group
        counts = [per[c, k] for k in range(5)]
        assert sum(counts) == n and max(counts) - min(counts) <= 1 and min(counts) >= 1
    totals = Counter(fold.values()).values()
    assert max(totals) - min(totals) <= 1


def test_fold_groups_is_seeded_and_order_free():
    strata = _strata({"a": 12, "b": 9})
    shuffled = dict(reversed(list(strata.items())))
    one = sk.fold_groups(strata, 4, seed=3)
    assert one == sk.fold_groups(shuffled, 4, seed=3)
    assert any(one != sk.fold_groups(strata, 4, seed=s) for s in range(4, 9))
    with pytest.raises(ValueError, match="at least 3 folds"):
        sk.fold_groups(strata, 2, seed=0)


def test_rotations_test_every_fold_once_and_never_validate_on_it():
    folds = 5
    for fold in range(folds):
        splits = [sk.rotation_split(fold, r, folds) for r in range(folds)]
        assert Counter(splits) == {"test": 1, "valid": 1, "train": folds - 2}
    for rotation in range(folds):
        splits = [sk.rotation_split(k, rotation, folds) for k in range(folds)]
        assert splits.index("test") == rotation
        assert splits.index("valid") == (rotation + 1) % folds


def test_write_rotations_rewrites_only_the_split_column(tmp_path, monkeypatch):
    rows = [(f"clips/t{i}.flac", "x", "lab", f"t{i}", i % 3) for i in range(6)]
    sk._write_csv(tmp_path / "labels.csv", ("path", "split", "label", "track", "fold"), rows)
    monkeypatch.setattr(sk, "FOLDS", 3)
    yamls = sk.write_rotations(tmp_path, "demo", "genre")
    assert [y.name for y in yamls] == ["fold0.yaml", "fold1.yaml", "fold2.yaml"]
    lines = (tmp_path / "fold2.csv").read_text().splitlines()
    assert lines[0] == "path,split,label,track,fold"
    assert lines[1:4] == [
        "clips/t0.flac,valid,lab,t0,0",
        "clips/t1.flac,train,lab,t1,1",
        "clips/t2.flac,test,lab,t2,2",
    ]
    assert f"path: {tmp_path / 'fold2.csv'}" in yamls[2].read_text()


def test_sounding_seconds_merges_overlaps_and_clips_to_window():
    assert sk.sounding_seconds([(0, 1), (0.5, 1.5), (3, 4)], 0, 10) == pytest.approx(2.5)
    assert sk.sounding_seconds([(-2, 0.4), (9.8, 12)], 0, 10) == pytest.approx(0.6)
    assert sk.sounding_seconds([(1, 2), (1.2, 1.5)], 0, 10) == pytest.approx(1.0)  # nested
    assert sk.sounding_seconds([], 0, 10) == 0


def test_sounding_tags_need_one_second_in_the_clip():
    notes = {
        "organ": [(0.0, 0.5), (0.4, 0.9), (5.0, 5.2)],  # 1.1 s in total, overlapping
        "pipe": [(0.0, 0.3)] * 10,  # ten unison notes: still 0.3 s
        "bass": [(14.5, 20.0)],  # sounds 0.5 s before the clip ends
        "brass": [(-3.0, 1.0)],  # held into the clip for 1 s
    }
    assert sk.sounding_tags(notes, 0.0, 15.0) == ["brass", "organ"]


def test_clip_starts_are_evenly_spaced_and_inside():
    assert sk.clip_starts(19.9, 20, 4) == []
    assert sk.clip_starts(20.0, 20, 4) == [0.0]
    assert sk.clip_starts(50.0, 20, 4) == [pytest.approx(2.5), pytest.approx(27.5)]
    starts = sk.clip_starts(1000.0, 20, 4)
    assert starts == [pytest.approx(s) for s in (115, 365, 615, 865)]


@pytest.mark.parametrize(
    "name, ok",
    [
        ("sound/cdtracks/a.ogg", True),
        ("../evil.ogg", False),
        ("sound/../../evil.ogg", False),
        ("/etc/passwd", False),
        ("C:/x.ogg", False),
        ("sound\\..\\..\\evil.ogg", False),
        ("", False),
    ],
)
def test_safe_member_refuses_traversal(name, ok):
    result = sk.safe_member(name)
    assert (result is not None) == ok
    if ok:
        assert result == PurePosixPath(name)


def test_list_sources_reaches_into_archives_by_folder(tmp_path, monkeypatch):
    game = tmp_path / "usr/share/games/g"
    (game / "music").mkdir(parents=True)
    (game / "music/loose.ogg").write_bytes(b"x")
    (game / "sounds").mkdir()
    (game / "sounds/click.ogg").write_bytes(b"x")
    with zipfile.ZipFile(game / "data.zip", "w") as archive:
        for name in (
            "audio/music/b.ogg",
            "audio/music/a.ogg",
            "audio/sfx/c.ogg",
            "audio/music/n.txt",
        ):
            archive.writestr(name, b"x")
        archive.writestr("audio/music/../../evil.ogg", b"x")
    files = sorted(str(p) for p in game.rglob("*") if p.is_file())
    monkeypatch.setattr(sk, "package_files", lambda package: files)

    inside = sk.list_sources("g", "/g/data.zip/audio/music/")
    assert [(s.relative, s.member) for s in inside] == [
        ("a.ogg", "audio/music/a.ogg"),
        ("b.ogg", "audio/music/b.ogg"),
    ]
    assert inside[0].installed == f"{game}/data.zip/audio/music/a.ogg"
    loose = sk.list_sources("g", "/g/music/")
    assert [(s.relative, s.member, s.installed) for s in loose] == [
        ("loose.ogg", None, f"{game}/music/loose.ogg")
    ]
    whole = sk.list_sources("g", "/games/g/")  # an archive below the folder keeps its name
    assert {s.relative for s in whole} >= {"data.zip/audio/sfx/c.ogg", "sounds/click.ogg"}
    assert not any(".." in s.relative for s in whole)
    with pytest.raises(FileNotFoundError, match="no .ogg/.opus files under /g/none/"):
        sk.list_sources("g", "/g/none/")


def test_fit_register_moves_whole_octaves():
    assert sk.fit_register([60, 64, 67], 33, 50) == -24  # a soprano line played by the bass
    assert sk.fit_register([40, 43], 67, 86) == 36
    assert sk.fit_register([60, 62], 48, 76) == 0
    assert sk.fit_register([], 48, 76) == 0


def test_tune_of_groups_variants():
    assert sk.tune_of("retro/cave_old.ogg") == sk.tune_of("antarctic/cave.ogg") == "cave"
    assert sk.tune_of("antarctic/airship_2.ogg") == sk.tune_of("x/airship_remix.ogg")
    assert sk.tune_of("Olympics.ogg") == sk.tune_of("olympics_sd.ogg")
    assert sk.tune_of("forest/forest2.ogg") != sk.tune_of("forest/forest.ogg")
    assert sk.tune_of("farm_f.ogg") == sk.tune_of("farm.ogg") == sk.tune_of("farm_fast.ogg")
    assert sk.tune_of("ingame_00.ogg") != sk.tune_of("ingame_01.ogg")  # two digits: tunes


def test_dep5_licences_last_matching_stanza_wins():
    text = (
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: *\nCopyright: someone\nLicense: GPL-2+\n\n"
        "Files: data/music/*\n sounds/x.ogg\nCopyright: composer\nLicense: CC-BY-SA-3.0\n"
        " Long text of the licence.\n\n"
        "License: CC-BY-SA-3.0\n Full text.\n"
    )
    assert sk.dep5_licences(text, "/usr/share/games/g/music/a/b.ogg") == ["CC-BY-SA-3.0"]
    assert sk.dep5_licences(text, "/usr/share/games/g/sounds/x.ogg") == ["CC-BY-SA-3.0"]
    assert sk.dep5_licences(text, "/usr/share/games/g/other/y.ogg") == ["GPL-2+"]
    assert sk.dep5_licences("free-form text, GPL\n", "/usr/share/x.ogg") == []
    empty_first_line = "Files: *\nCopyright: x\nLicense:\n GPL-2+ text on the next lines\n"
    assert sk.dep5_licences(empty_first_line, "/usr/share/x.ogg") == []


def test_ensure_packages_refuses_without_root(monkeypatch):
    monkeypatch.setattr(sk, "_installed", lambda package: package == "present")
    monkeypatch.setattr(sk.os, "geteuid", lambda: 1000)
    sk.ensure_packages(["present"])  # nothing missing: no apt-get, no error
    with pytest.raises(PermissionError, match=r"missing Debian packages a b: run as root") as err:
        sk.ensure_packages(["present", "a", "b"])
    assert "\n" not in str(err.value)
