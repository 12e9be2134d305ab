"""The validation split, held out of the training pairs by video, and the check that no video is in two splits.

A video is held out when the SHA-256 of its file name (or of its group's name, `Pair.group`: clips of one
source video, near-duplicates), read as a fraction of 2**64, falls below `data.val_fraction`. Membership
depends on the name alone: the held-out videos of a subset of a dataset are the subset's share of the
whole's, so a teacher trained on the whole never sees a student's validation clips, and the split stays put
when files move or the annotation order changes. Every caption of a video goes with it, never a caption
alone, and every video of a group with the group.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from distill.core.files import file_sha256
from distill.data.formats import Pair


def held_out(video: str, fraction: float, group: str | None = None) -> bool:
    """Whether `video` (a path) is in the validation split held out with `fraction`: by its file name, or
    by its `group` when it has one."""
    digest = hashlib.sha256((Path(video).name if group is None else group).encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def hold_out(pairs: Sequence[Pair], fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(the training pairs, the validation pairs) of `pairs`, in their order, split by video (by group, where
    pairs have one)."""
    train, val, groups = [], [], {}
    for pair in pairs:
        if groups.setdefault(pair.video, pair.group) != pair.group:
            raise ValueError(
                f"data: {pair.where}: video {pair.video} is in group {pair.group!r} here and "
                f"{groups[pair.video]!r} in an earlier row; a video has one group"
            )
        (val if held_out(pair.video, fraction, pair.group) else train).append(pair)
    return train, val


def check_disjoint(splits: Mapping[str, Sequence[Pair]]) -> None:
    """Raises ValueError naming a video that is in two splits: the same file (after resolving links and
    relative paths) or two files of the same bytes (only files of equal size are read, so the check costs a
    `stat` a video unless sizes collide). Missing files are left to the video check."""
    owner: dict[str, tuple[str, str]] = {}  # resolved path -> (split, path as annotated)
    by_size: dict[int, list[tuple[str, str]]] = {}  # size -> [(split, path)], one entry per file
    for split, pairs in splits.items():
        for video in dict.fromkeys(pair.video for pair in pairs):
            real = os.path.realpath(video)
            if real in owner:
                if owner[real][0] != split:
                    raise ValueError(_both(owner[real], (split, video), "is the same file as"))
                continue
            owner[real] = (split, video)
            try:
                size = os.stat(real).st_size
            except OSError:
                continue
            by_size.setdefault(size, []).append((split, video))
    for files in by_size.values():
        if len({split for split, _ in files}) < 2:
            continue
        seen: dict[str, tuple[str, str]] = {}
        for split, video in files:
            digest = file_sha256(video)
            if digest in seen and seen[digest][0] != split:
                raise ValueError(_both(seen[digest], (split, video), "has the same bytes as"))
            seen.setdefault(digest, (split, video))


def _both(first: tuple[str, str], second: tuple[str, str], relation: str) -> str:
    return (
        f"data: {second[0]} video {second[1]} {relation} {first[0]} video {first[1]}; a clip may be in one split "
        "only (one trained on and then evaluated measures memory, not retrieval): remove it from one of them"
    )
