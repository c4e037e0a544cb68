"""Pure helpers of bench/science_kit.py: splits over whole groups, tags by sounding time, clip
placement, zip-member and register guards. No apt, no music21, no audio from the kit."""

import importlib.util
import sys
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
def test_split_groups_is_stratified_with_min_test(seed):
    strata = _strata({"a": 10, "b": 16, "c": 26, "d": 46})
    split = sk.split_groups(strata, (0.5, 0.2, 0.3), seed=seed, min_test=3)
    assert set(split) == set(strata)
    per = Counter((strata[g], s) for g, s in split.items())
    for c, n in {"a": 10, "b": 16, "c": 26, "d": 46}.items():
        assert per[c, "test"] == max(3, round(n * 0.3))
        assert per[c, "valid"] == round(n * 0.2)
        assert per[c, "train"] == n - per[c, "test"] - per[c, "valid"] >= 1


def test_split_groups_small_strata_keep_a_train_group():
    split = sk.split_groups(_strata({"x": 3, "y": 1}), (0.5, 0.2, 0.3), seed=0, min_test=3)
    assert Counter(split[f"x/track{i:02d}"] for i in range(3)) == {"test": 2, "train": 1}
    assert split["y/track00"] == "train"


def test_split_groups_is_seeded_and_order_free():
    strata = _strata({"a": 12, "b": 9})
    shuffled = dict(reversed(list(strata.items())))
    one = sk.split_groups(strata, (0.6, 0.2, 0.2), seed=3)
    assert one == sk.split_groups(shuffled, (0.6, 0.2, 0.2), seed=3)
    assert any(one != sk.split_groups(strata, (0.6, 0.2, 0.2), seed=s) for s in range(4, 9))


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


def test_ensure_packages_refuses_without_root(monkeypatch):
    monkeypatch.setattr(sk, "_installed", lambda package: package == "present")
    monkeypatch.setattr(sk.os, "geteuid", lambda: 1000)
    sk.ensure_packages(["present"])  # nothing missing: no apt-get, no error
    with pytest.raises(PermissionError, match=r"missing Debian packages a b: run as root") as err:
        sk.ensure_packages(["present", "a", "b"])
    assert "\n" not in str(err.value)
