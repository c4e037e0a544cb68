"""Damage a shard tar in place, as storage or a stray writer would after its manifest was
written: bytes overwritten inside a sample, or the file cut at a member boundary."""

from __future__ import annotations

import tarfile


def _feature_offsets(tar_path) -> list[tuple[int, int]]:
    """(data offset, size) of every `.feat.npy` member, in tar order."""
    with tarfile.open(tar_path) as tar:
        return [(m.offset_data, m.size) for m in tar.getmembers() if m.name.endswith(".npy")]


def overwrite_middle(tar_path, nbytes: int = 4096) -> None:
    """Overwrite `nbytes` inside the feature payload of the middle sample with zeros: finite
    float16 values, so only the checksum can tell."""
    offsets = _feature_offsets(tar_path)
    start, size = offsets[len(offsets) // 2]
    nbytes = min(nbytes, size - 256)
    with open(tar_path, "r+b") as f:
        f.seek(start + 200)  # past the npy header
        f.write(b"\0" * nbytes)


def cut_at_member(tar_path) -> None:
    """Truncate right before the header of the middle sample: a shorter tar that still parses."""
    offsets = _feature_offsets(tar_path)
    header = offsets[len(offsets) // 2][0] - 512
    with open(tar_path, "r+b") as f:
        f.truncate(header)
