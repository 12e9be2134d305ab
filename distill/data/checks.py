"""The check every video gets before training, and the reports of what was wrong.

Opening a video costs about a millisecond (decord and PyAV both read its packet index), and catches the
missing, empty, truncated and undecodable files that would otherwise fail in the middle of an epoch. The
pairs of a bad video are dropped, never trained on with a zero clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from distill.core.schema import DataConfig
from distill.data.formats import Annotations, Pair, Problem, read_split
from distill.data.shards import FrameShards
from distill.data.video import Backend, VideoError, probe_video


def check_videos(
    pairs: Sequence[Pair], *, backend: Backend = "decord", shards: FrameShards | None = None, progress: bool = False
) -> tuple[list[Pair], list[Problem]]:
    """Opens every video of `pairs` once; a video the frame `shards` hold is not opened: their prepare
    decoded it (or recorded why it failed).

    Returns:
        (the pairs whose video opens, one problem per video that does not: where it was first named, why it
        failed and how many pairs it takes with it).
    """
    named: dict[str, list[Pair]] = {}
    for pair in pairs:
        named.setdefault(pair.video, []).append(pair)
    failed: dict[str, str] = {}
    for video in tqdm(named, desc="check videos", unit="video", disable=not progress):
        if shards is not None and video in shards:
            if video in shards.failed:
                failed[video] = shards.failed[video]
            continue
        try:
            probe_video(video, backend)
        except VideoError as error:
            failed[video] = str(error)
    problems = []
    for video, error in failed.items():
        count = len(named[video])
        skipped = "1 pair skipped" if count == 1 else f"{count} pairs skipped"
        problems.append(Problem(named[video][0].where, f"{error}; {skipped}", video=video))
    return [pair for pair in pairs if pair.video not in failed], problems


def write_bad_videos(path: Path, problems: Sequence[Problem], *, append: bool = False) -> None:
    """Lists the bad videos among `problems`, one `video<TAB>problem` line each."""
    with Path(path).open("a" if append else "w") as f:
        f.writelines(f"{p.video}\t{p}\n" for p in problems if p.video is not None)


def describe(problems: Sequence[Problem], *, limit: int | None = None) -> list[str]:
    """Log lines for `problems`, at most `limit` of them and a line counting the rest."""
    lines = [f"  {p}" for p in problems[:limit]]
    if limit is not None and len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return lines


def read_split_or_stop(data: DataConfig, split: str) -> Annotations:
    """`read_split`, for a run: a malformed annotation is a ValueError listing the fatal problems."""
    found = read_split(data, split)
    if fatal := [p for p in found.problems if p.fatal]:
        lines = [f"data: malformed {split} annotations:", *describe(fatal, limit=20)]
        raise ValueError("\n".join([*lines, "python -m distill.prepare --check RECIPE lists every problem"]))
    return found
