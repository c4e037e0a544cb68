"""Tasks: a labelled list of tracks with train/valid/test splits (DESIGN §8, §11).

Three layouts, picked by `TaskConfig.source` and parsed in `sources.py`:
- `gtzan`: one sub-folder per genre; splits from a split file, else a seeded stratified split.
- `mtt`: MagnaTagATune `annotations_final.csv` (tab-separated: clip_id, 188 tag columns,
  mp3_path); the standard directory split (0-b train, c valid, d-f test) and top-k tags.
- `csv`: the generic `path,split,label,tags` CSV that the demo corpus writes.
This module checks files, de-duplicates, applies the vocabulary (fixed classes or top-k) and
draws seeded stratified splits where the source has none.

Bad rows never vanish silently: each becomes a `Skip` (where + reason), the loader logs a
summary per reason with examples, and callers write the full list next to their results.
Structural problems (missing file or column, no train/test tracks) raise one-line errors.
"""

from __future__ import annotations

import collections
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from musicoder import storage
from musicoder.downstream.config import GENRE, SPLITS, TaskConfig
from musicoder.downstream.sources import PARSERS, Row, Skip, csv_text

log = logging.getLogger(__name__)

SKIP_COLUMNS = ("where", "reason", "error")

EXAMPLES_IN_WARNING = 5
EXISTS_THREADS = 16  # existence checks are I/O bound (S3 HEAD requests)


@dataclass(frozen=True, slots=True)
class Track:
    """One labelled track: `targets` are class indices (exactly one for genre)."""

    uri: str
    split: str
    targets: tuple[int, ...]


@dataclass
class TaskData:
    """A parsed task: its vocabulary, tracks and everything that was skipped."""

    name: str
    kind: str
    classes: list[str]
    tracks: list[Track]
    skipped: list[Skip]

    def split(self, name: str) -> list[Track]:
        """The tracks of one split, in a stable order."""
        return [t for t in self.tracks if t.split == name]

    def counts(self) -> dict[str, int]:
        """Tracks per split plus the number of skips."""
        out = {s: sum(t.split == s for t in self.tracks) for s in SPLITS}
        return {**out, "skipped": len(self.skipped)}


def load_task(cfg: TaskConfig, *, skip_list: str | None = None) -> TaskData:
    """Parses a task source into labelled tracks with splits.

    Args:
        cfg: The task declaration.
        skip_list: Where to write every skipped row (`where,reason,error` CSV) when there are
            any, also when the task then fails for lack of tracks; None writes nothing.

    Returns:
        The tracks, classes (sorted; tagging with `top_k`: by frequency) and skips.

    Raises:
        FileNotFoundError: `cfg.path` (or a split file) does not exist.
        ValueError: A malformed header, a file where a folder is due (or the reverse), or no
            train or test tracks remain.
    """
    if not cfg.path:
        raise ValueError(f"task {cfg.name}: 'path' is empty")
    try:
        rows, skipped, listed = PARSERS[cfg.source](cfg)
    except (IsADirectoryError, NotADirectoryError) as err:  # a folder for a file or vice versa
        why = (err.strerror or str(err)).lower()
        where = err.filename or cfg.path
        raise ValueError(f"{where}: {why} (task {cfg.name}, source {cfg.source})") from None
    total = len(rows) + len(skipped)
    if not listed:
        rows = _existing(rows, skipped)
    rows = _dedupe(rows, skipped)
    classes, rows = _vocabulary(cfg, rows, skipped)
    rows = _assign_splits(cfg, rows)
    index = {c: i for i, c in enumerate(classes)}
    tracks = [Track(r.uri, r.split, tuple(sorted(index[x] for x in r.labels))) for r in rows]
    data = TaskData(
        cfg.name, cfg.kind, classes, sorted(tracks, key=lambda t: (t.split, t.uri)), skipped
    )
    what = f"task {cfg.name}"
    warn_skips(what, skipped)
    if skipped and skip_list:
        write_skips(skip_list, skipped)
    summary = skip_summary(skipped, total, "rows" if cfg.source != "gtzan" else "files")
    if summary:
        log.warning("%s: %s%s", what, summary, f" (listed in {skip_list})" if skip_list else "")
    for split in ("train", "test"):
        if not data.split(split):
            listed = f"; listed in {skip_list}" if skipped and skip_list else ""
            raise ValueError(
                f"{cfg.path}: task {cfg.name} has no {split} tracks"
                + (f": {summary}{listed}" if summary else "")
            )
    log.info("task %s: %d classes, tracks %s", cfg.name, len(classes), data.counts())
    return data


def skip_summary(skipped: list[Skip], total: int, unit: str = "rows") -> str:
    """`500 of 500 rows skipped: 500 file not found` (reasons by count), or '' with no skips."""
    if not skipped:
        return ""
    counts = collections.Counter(s.reason for s in skipped)
    reasons = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
    return f"{len(skipped)} of {total} {unit} skipped: {reasons}"


def write_skips(uri: str, skipped: list[Skip]) -> None:
    """Every skip as a `where,reason,error` CSV."""
    rows = [(s.where, s.reason, s.error) for s in skipped]
    storage.write_text(uri, csv_text(SKIP_COLUMNS, rows))


def warn_skips(what: str, skipped: list[Skip]) -> None:
    """Logs one warning per skip reason with a count and a few examples."""
    by_reason: dict[str, list[str]] = collections.defaultdict(list)
    for s in skipped:
        by_reason[s.summary].append(s.where)
    for reason, wheres in sorted(by_reason.items()):
        more = (
            f" (+{len(wheres) - EXAMPLES_IN_WARNING} more)"
            if len(wheres) > EXAMPLES_IN_WARNING
            else ""
        )
        log.warning(
            "%s: skipped %d: %s: %s%s",
            what,
            len(wheres),
            reason,
            ", ".join(wheres[:EXAMPLES_IN_WARNING]),
            more,
        )


def stratified_split(
    keys: list[str], strata: list[str], *, valid_fraction: float, test_fraction: float, seed: int
) -> list[str]:
    """Seeded stratified train/valid/test assignment.

    Within each stratum the keys are sorted, shuffled with one generator seeded by `seed`, and
    the first `round(n * test_fraction)` go to test, the next `round(n * valid_fraction)` to
    valid. The result depends only on the key set, not on input order.

    Returns:
        The split name of each key, aligned with `keys`.
    """
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, stratum in enumerate(strata):
        groups[stratum].append(i)
    out = ["train"] * len(keys)
    for stratum in sorted(groups):
        members = sorted(groups[stratum], key=lambda i: keys[i])
        order = [members[j] for j in rng.permutation(len(members))]
        n_test, n_valid = round(len(order) * test_fraction), round(len(order) * valid_fraction)
        for i in order[:n_test]:
            out[i] = "test"
        for i in order[n_test : n_test + n_valid]:
            out[i] = "valid"
    return out


def _existing(rows: list[Row], skipped: list[Skip]) -> list[Row]:
    with ThreadPoolExecutor(EXISTS_THREADS) as pool:
        found = list(pool.map(storage.exists, [r.uri for r in rows]))
    skipped += [
        Skip(f"{r.where} {r.uri}", "file not found")
        for r, ok in zip(rows, found, strict=True)
        if not ok
    ]
    return [r for r, ok in zip(rows, found, strict=True) if ok]


def _dedupe(rows: list[Row], skipped: list[Skip]) -> list[Row]:
    seen: set[str] = set()
    out = []
    for r in rows:
        key = storage.real_key(r.uri)
        if key in seen:
            skipped.append(Skip(f"{r.where} {r.uri}", "duplicate of an earlier row"))
        else:
            seen.add(key)
            out.append(r)
    return out


def _vocabulary(
    cfg: TaskConfig, rows: list[Row], skipped: list[Skip]
) -> tuple[list[str], list[Row]]:
    counts = collections.Counter(label for r in rows for label in r.labels)
    ranked = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    top_k = cfg.top_k if cfg.kind != GENRE and cfg.classes is None else None
    classes = (
        list(cfg.classes)
        if cfg.classes is not None
        else ranked[:top_k]
        if top_k
        else sorted(counts)
    )
    known, out = set(classes), []
    for r in rows:
        kept = tuple(x for x in r.labels if x in known)
        unknown = (
            ", ".join(x for x in r.labels if x not in known) if cfg.classes is not None else ""
        )
        if kept:
            out.append(Row(r.uri, r.split, kept, r.where))
        if unknown:
            what = (
                "unknown label"
                if cfg.kind == GENRE
                else "dropped unknown tags"
                if kept
                else "only unknown tags"
            )
            skipped.append(Skip(r.where, f"{what}: {unknown}"))
        elif not kept:
            skipped.append(Skip(r.where, f"no tags among the top {top_k}" if top_k else "no tags"))
    return classes, out


def _assign_splits(cfg: TaskConfig, rows: list[Row]) -> list[Row]:
    drawn = [r for r in rows if r.split is None]
    if drawn:
        names = stratified_split(
            [r.uri for r in drawn], [r.labels[0] for r in drawn],
            valid_fraction=cfg.valid_fraction, test_fraction=cfg.test_fraction, seed=cfg.split_seed,
        )  # fmt: skip
        rows = [r for r in rows if r.split is not None] + [
            _replace_split(r, s) for r, s in zip(drawn, names, strict=True)
        ]
    if not any(r.split == "valid" for r in rows) and cfg.valid_fraction > 0:
        train = [r for r in rows if r.split == "train"]
        names = stratified_split(
            [r.uri for r in train], [r.labels[0] if r.labels else "" for r in train],
            valid_fraction=cfg.valid_fraction, test_fraction=0.0, seed=cfg.split_seed,
        )  # fmt: skip
        log.warning(
            "task %s: no valid tracks; holding out %d train tracks for validation",
            cfg.name,
            names.count("valid"),
        )
        moved = {r.uri: s for r, s in zip(train, names, strict=True)}
        rows = [_replace_split(r, moved.get(r.uri, r.split)) for r in rows]
    return rows


def _replace_split(row: Row, split: str | None) -> Row:
    return Row(row.uri, split, row.labels, row.where)
