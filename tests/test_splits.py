"""The validation split held out of the train pairs by video, and the stop at a video in two splits."""

import json
import os
import shutil

import numpy as np
import pytest

from distill.context import open_datasets, start_run
from distill.data.formats import Pair
from distill.data.splits import check_disjoint, hold_out
from distill.data.synthetic import write_mp4
from distill.recipe import load_recipe


def pairs_of(names: list[str], captions: int = 1) -> list[Pair]:
    return [Pair(f"videos/{name}", f"{name} {i}", f"train.jsonl, line {i}") for name in names for i in range(captions)]


def test_hold_out_splits_by_video_and_keeps_the_order():
    names = [f"train_{i:05d}.mp4" for i in range(1600)]
    train, val = hold_out(pairs_of(names, captions=3), 0.1)
    val_videos = list(dict.fromkeys(p.video for p in val))
    # Every caption of a held-out video goes with it, none stays behind.
    assert len(val) == 3 * len(val_videos) and not {p.video for p in train} & set(val_videos)
    assert [p.video for p in train + val] != [p.video for p in pairs_of(names, 3)]  # really split
    assert sorted(train + val) == sorted(pairs_of(names, 3))
    assert train == sorted(train, key=lambda p: (p.video, p.where)) and val == sorted(
        val, key=lambda p: (p.video, p.where)
    )
    # The share is a binomial draw of 1600 at 0.1: 160 +- 12 (one sd); the hash is fixed, so is the count.
    assert 160 - 36 < len(val_videos) < 160 + 36
    assert hold_out(pairs_of(names, 3), 0.1) == (train, val)  # deterministic
    assert hold_out(pairs_of(names), 0.0) == (pairs_of(names), [])


def test_videos_of_one_group_are_held_out_together():
    names = [f"train_{i:05d}.mp4" for i in range(400)]
    grouped = [pair._replace(group=names[i - i % 2]) for i, pair in enumerate(pairs_of(names))]  # twos
    train, val = hold_out(grouped, 0.1)
    groups = {p.group for p in val}
    assert len(val) == 2 * len(groups) and not groups & {p.group for p in train}
    # A group is held out as a video of its name would be: the first video of each two keeps its place.
    alone = {p.video for p in hold_out(pairs_of(names), 0.1)[1]}
    assert {p.video for p in val if p.video.endswith(p.group)} == {v for v in alone if int(v[-9:-4]) % 2 == 0}


def test_a_subset_holds_out_its_share_of_the_wholes_validation_videos():
    """A teacher trained on all clips never sees the validation clips of a student trained on some."""
    names = [f"train_{i:05d}.mp4" for i in range(1600)]
    _, whole = hold_out(pairs_of(names), 0.1)
    _, part = hold_out(pairs_of(names[:400]), 0.1)
    assert part == [p for p in whole if p.video in {f"videos/{n}" for n in names[:400]}] and part
    # By file name: the folder the videos sit in does not move a video between splits.
    moved = [p._replace(video=f"/elsewhere/{os.path.basename(p.video)}") for p in pairs_of(names)]
    assert [os.path.basename(p.video) for p in hold_out(moved, 0.1)[1]] == [os.path.basename(p.video) for p in whole]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i in range(3):
        write_mp4(folder / f"clip{i}.mp4", np.full((8, 32, 32, 3), 40 + 60 * i, np.uint8), fps=4)
    return folder


def test_a_video_in_two_splits_stops_naming_both(clips, tmp_path):
    a, b = str(clips / "clip0.mp4"), str(clips / "clip1.mp4")
    check_disjoint({"train": [Pair(a, "x", ""), Pair(a, "y", "")], "test": [Pair(b, "z", "")]})  # twice in one: fine
    with pytest.raises(ValueError, match=f"test video {a} is the same file as train video {a}"):
        check_disjoint({"train": [Pair(a, "x", "")], "test": [Pair(a, "z", "")]})
    linked = tmp_path / "link.mp4"
    os.symlink(a, linked)
    with pytest.raises(ValueError, match=f"val video {linked} is the same file as train video {a}"):
        check_disjoint({"train": [Pair(a, "x", "")], "val": [Pair(str(linked), "z", "")]})
    copy = shutil.copy(b, tmp_path / "renamed.mp4")
    with pytest.raises(ValueError, match=f"test video {copy} has the same bytes as train video {b}"):
        check_disjoint({"train": [Pair(a, "x", ""), Pair(b, "y", "")], "test": [Pair(str(copy), "z", "")]})
    # Same size, other bytes: two different videos.
    other = tmp_path / "other.mp4"
    data = bytearray(open(b, "rb").read())
    data[-1] ^= 1
    other.write_bytes(bytes(data))
    check_disjoint({"train": [Pair(b, "y", "")], "test": [Pair(str(other), "z", ""), Pair("missing.mp4", "w", "")]})


def jsonl_run(tmp_path, clips, train: list[str], test: list[str], val_fraction: float):
    for split, names in (("train", train), ("test", test)):
        lines = [json.dumps({"video": name, "caption": f"{split} {i}"}) for i, name in enumerate(names)]
        (tmp_path / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    data = {"format": "jsonl", "train": "train.jsonl", "test": "test.jsonl", "video_root": str(clips)}
    data |= {"annotations": str(tmp_path), "val_fraction": val_fraction}
    recipe = {"name": "splits", "output_dir": str(tmp_path / "run"), "data": data}
    (tmp_path / "recipe.yaml").write_text(json.dumps(recipe))
    return start_run(load_recipe(tmp_path / "recipe.yaml"))


def test_run_holds_out_validation_videos_and_refuses_a_test_video_it_trains_on(clips, tmp_path):
    # At 0.5, clip1 is held out (its name's hash reads 0.22 of 2**64) and clip0 is not (0.76).
    run = jsonl_run(tmp_path, clips, ["clip0.mp4", "clip1.mp4", "clip0.mp4"], ["clip2.mp4"], 0.5)
    data = open_datasets(run)
    assert data["train"].captions == ["train 0", "train 2"] and data["val"].captions == ["train 1"]
    assert data["test"].captions == ["test 0"]
    run = jsonl_run(tmp_path, clips, ["clip0.mp4", "clip1.mp4"], ["clip1.mp4"], 0.5)
    with pytest.raises(ValueError, match="test video .*clip1.mp4 is the same file as val video"):
        open_datasets(run)
    run = jsonl_run(tmp_path, clips, ["clip0.mp4"], ["clip2.mp4"], 0.0)
    assert sorted(open_datasets(run)) == ["test", "train"]


def test_val_fraction_must_be_below_one(tmp_path):
    (tmp_path / "r.yaml").write_text("name: x\n")
    with pytest.raises(ValueError, match="data.val_fraction: must be at least 0 and below 1, got 1.0"):
        load_recipe(tmp_path / "r.yaml", ["data.val_fraction=1.0", "stages=[data]"])


def test_a_video_in_two_groups_is_an_error_naming_it():
    pairs = [Pair("videos/a.mp4", "one", "line 1", "g1"), Pair("videos/a.mp4", "two", "line 2", "g2")]
    with pytest.raises(ValueError, match="line 2: video videos/a.mp4 is in group 'g2' here and 'g1'"):
        hold_out(pairs, 0.5)
