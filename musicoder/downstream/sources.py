"""Task source parsers: GTZAN-style folder, MagnaTagATune annotations, generic CSV.

Each parser turns one layout into `Row`s (audio URI, split or None, raw labels, where it came
from) plus `Skip`s for bad rows; `tasks.load_task` then applies the vocabulary and splits.
A parser also says whether its URIs came from a listing (so existence needs no second check).
Paths in a generic CSV are relative to its folder, absolute, or URIs (DESIGN §11); MTT paths
must stay inside the audio root (`<0-f>/<file>`).
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from musicoder import storage
from musicoder.audio import AUDIO_EXTENSIONS
from musicoder.downstream.config import GENRE, SPLITS, TaskConfig

MTT_SPLIT_BY_DIR = {
    **dict.fromkeys("0123456789ab", "train"),
    "c": "valid",
    **dict.fromkeys("def", "test"),
}
TAG_SEPARATOR = ";"
SPLIT_PLACEHOLDER = "{split}"


@dataclass(frozen=True, slots=True)
class Skip:
    """A row or file left out: where it came from (`file:line` or URI), why, and the error class
    when an exception was the cause (e.g. `SilentAudioError`)."""

    where: str
    reason: str
    error: str = ""

    @classmethod
    def from_error(cls, where: str, err: Exception) -> Skip:
        """A skip for a caught exception; `AudioError`s contribute their short human reason."""
        return cls(where, str(getattr(err, "reason", None) or err), type(err).__name__)

    @property
    def summary(self) -> str:
        """`error: reason`, or just the reason."""
        return f"{self.error}: {self.reason}" if self.error else self.reason


def csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """CSV text (RFC 4180 quoting, `\\n` line ends) of a header and rows."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


@dataclass(frozen=True, slots=True)
class Row:
    """A parsed row before vocabulary and split assignment."""

    uri: str
    split: str | None  # None: drawn by the seeded stratified split
    labels: tuple[str, ...]
    where: str


def _inside(base: str, relative: str) -> str | None:
    """`base/relative`, or None when `relative` is absolute or leaves `base` (path traversal)."""
    parts = relative.replace("\\", "/").split("/")
    if not relative or relative.startswith(("/", "\\")) or "://" in relative or ".." in parts:
        return None
    return storage.join(base, *[p for p in parts if p not in ("", ".")])


def _resolve(base: str, path: str) -> str | None:
    """A CSV path: relative to the CSV's folder, absolute, or a URI; None for `..` under S3."""
    try:
        return storage.resolve(base, path)
    except ValueError:
        return None


def _parse_csv(cfg: TaskConfig) -> tuple[list[Row], list[Skip], bool]:
    column = "label" if cfg.kind == GENRE else "tags"
    reader = csv.DictReader(io.StringIO(storage.read_text(cfg.path)))
    for required in ("path", "split", column):
        if required not in (reader.fieldnames or []):
            raise ValueError(
                f"{cfg.path}: missing column '{required}' (kind {cfg.kind} needs {column})"
            )
    base, rows, skipped = storage.parent(cfg.path), [], []
    for record in reader:
        where = f"{cfg.path}:{reader.line_num}"
        path, split = (record.get("path") or "").strip(), (record.get("split") or "").strip()
        raw = (record.get(column) or "").strip()
        labels = (
            (raw,)
            if cfg.kind == GENRE
            else tuple(t.strip() for t in raw.split(TAG_SEPARATOR) if t.strip())
        )
        uri = _resolve(base, path) if path else None
        reason = (
            "empty path" if not path
            else f"path '{path}' leaves the CSV's S3 prefix" if uri is None
            else f"unknown split '{split}' (want train, valid or test)" if split not in SPLITS
            else f"empty {column}" if not any(labels)
            else None
        )  # fmt: skip
        if reason:
            skipped.append(Skip(where, reason))
        else:
            rows.append(Row(uri, split, labels, where))
    return rows, skipped, False


def _parse_mtt(cfg: TaskConfig) -> tuple[list[Row], list[Skip], bool]:
    reader = csv.reader(io.StringIO(storage.read_text(cfg.path)), delimiter="\t")
    header = next(reader, None)
    if not header or header[0] != "clip_id" or header[-1] != "mp3_path" or len(header) < 3:
        raise ValueError(
            f"{cfg.path}: not a MagnaTagATune annotations file (want clip_id, tags..., mp3_path)"
        )
    tags, base = header[1:-1], cfg.audio_root or storage.parent(cfg.path)
    rows, skipped = [], []
    for values in reader:
        where = f"{cfg.path}:{reader.line_num}"
        if not values:
            continue
        if len(values) != len(header):
            skipped.append(Skip(where, f"expected {len(header)} columns, got {len(values)}"))
            continue
        flags, mp3 = values[1:-1], values[-1].strip()
        split, uri = MTT_SPLIT_BY_DIR.get(mp3.split("/")[0]), _inside(base, mp3)
        if any(f not in ("0", "1") for f in flags):
            skipped.append(Skip(where, "tag value other than 0 or 1"))
        elif uri is None or split is None:
            skipped.append(
                Skip(where, f"mp3_path '{mp3}' is not <0-f>/<file> inside the audio root")
            )
        else:
            positive = tuple(t for t, f in zip(tags, flags, strict=True) if f == "1")
            rows.append(Row(uri, split, positive, where))
    return rows, skipped, False


def _parse_gtzan(cfg: TaskConfig) -> tuple[list[Row], list[Skip], bool]:
    rows, skipped = [], []
    for info in storage.list_objects(cfg.path, extensions=AUDIO_EXTENSIONS):
        rel = _relative(info.uri, cfg.path)
        if info.size <= 0:
            skipped.append(Skip(info.uri, "broken link" if info.size < 0 else "empty file"))
        elif "/" not in rel:
            skipped.append(Skip(info.uri, "not inside a genre folder"))
        else:
            rows.append(Row(info.uri, None, (rel.split("/")[-2],), info.uri))
    if not rows and not skipped:
        raise FileNotFoundError(f"{cfg.path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) found")
    if cfg.split_file:
        rows = _apply_split_file(cfg.split_file, rows, skipped)
    return rows, skipped, True


def _relative(uri: str, root: str) -> str:
    if storage.is_local(root):
        return os.path.relpath(
            os.path.abspath(storage.local_path(uri)), os.path.abspath(storage.local_path(root))
        )
    return uri[len(root.rstrip("/")) + 1 :]


def _track_key(path: str) -> str:
    """`genre/stem` of a path, so `genres/blues/blues.00000.au` matches `blues/blues.00000.wav`."""
    parts = posixpath.splitext(path.replace("\\", "/"))[0].split("/")
    return "/".join(parts[-2:])


def _apply_split_file(spec: str, rows: list[Row], skipped: list[Skip]) -> list[Row]:
    wanted: dict[str, tuple[str, str]] = {}  # track key -> (split, where)
    files = (
        [(spec.replace(SPLIT_PLACEHOLDER, s), s) for s in SPLITS]
        if SPLIT_PLACEHOLDER in spec
        else [(spec, None)]
    )
    for name, fixed_split in files:
        for number, line in enumerate(storage.read_text(name).splitlines(), 1):
            fields = line.replace(",", " ").replace("\t", " ").split()
            if not fields or fields[0].startswith("#"):
                continue
            split = fixed_split or (fields[1] if len(fields) > 1 else "")
            if split not in SPLITS:
                raise ValueError(
                    f"{name}:{number}: unknown split '{split}' (want train, valid or test)"
                )
            wanted[_track_key(fields[0])] = (split, f"{name}:{number}")
    by_key = {_track_key(r.uri): r for r in rows}
    skipped += [
        Skip(r.uri, "not listed in the split file") for k, r in by_key.items() if k not in wanted
    ]
    skipped += [
        Skip(where, f"listed track '{k}' not found")
        for k, (_, where) in wanted.items()
        if k not in by_key
    ]
    return [Row(r.uri, wanted[k][0], r.labels, r.where) for k, r in by_key.items() if k in wanted]


PARSERS: dict[str, Callable[[TaskConfig], tuple[list[Row], list[Skip], bool]]] = {
    "csv": _parse_csv,
    "mtt": _parse_mtt,
    "gtzan": _parse_gtzan,
}
