"""Missing, empty, truncated and undecodable videos and empty captions: skipped, counted and listed, never
trained on as zeros, and a video that breaks during training does not stop the epoch."""

import json
import shutil

import av
import numpy as np
import pytest
from torch.utils.data import DataLoader

from distill.context import open_datasets, start_run
from distill.data.checks import check_videos, write_bad_videos
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import Pair
from distill.data.synthetic import write_mp4
from distill.data.video import VideoError
from distill.recipe import load_recipe

VIEWS = {"teacher": View(4, 32), "student": View(2, 32)}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Four good 2 s clips of distinct grey levels, and every kind of bad video."""
    folder = tmp_path_factory.mktemp("clips")
    for i in range(4):
        write_mp4(folder / f"good{i}.mp4", np.full((8, 32, 32, 3), 40 + 50 * i, np.uint8), fps=4)
    data = (folder / "good0.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: cut off
    with av.open(str(folder / "faststart.mp4"), "w", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for frame in np.random.default_rng(0).integers(0, 255, (40, 32, 32, 3), dtype=np.uint8):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = (folder / "faststart.mp4").read_bytes()
    (folder / "truncated_faststart.mp4").write_bytes(data[: int(len(data) * 0.7)])  # index intact, data cut
    (folder / "empty.mp4").write_bytes(b"")
    (folder / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (folder / "text.mp4").write_text("not a video\n")
    return folder


BAD = ["missing.mp4", "empty.mp4", "truncated.mp4", "truncated_faststart.mp4", "garbage.mp4", "text.mp4"]


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_check_drops_every_bad_video_and_names_its_annotation(clips, backend):
    names = ["good0.mp4", *BAD, "good1.mp4"]
    pairs = [Pair(str(clips / name), f"caption {i}", f"pairs.jsonl, line {i + 1}") for i, name in enumerate(names)]
    pairs.append(Pair(str(clips / "missing.mp4"), "another caption", "pairs.jsonl, line 9"))
    good, problems = check_videos(pairs, backend=backend)
    assert [p.video for p in good] == [str(clips / "good0.mp4"), str(clips / "good1.mp4")]
    assert [p.video for p in problems] == [str(clips / name) for name in BAD]
    assert [p.where for p in problems] == [f"pairs.jsonl, line {i}" for i in range(2, 8)]
    assert all(p.video in p.message and not p.fatal for p in problems)
    assert problems[0].message.startswith("video file not found") and problems[0].message.endswith("2 pairs skipped")
    assert problems[1].message.endswith("; 1 pair skipped")


def test_bad_videos_file_lists_one_video_a_line(clips, tmp_path):
    _, problems = check_videos([Pair(str(clips / "missing.mp4"), "x", "a.jsonl, line 3")])
    write_bad_videos(tmp_path / "bad_videos.txt", problems)
    write_bad_videos(tmp_path / "bad_videos.txt", problems, append=True)
    lines = (tmp_path / "bad_videos.txt").read_text().splitlines()
    assert (
        lines
        == [f"{clips / 'missing.mp4'}\ta.jsonl, line 3: video file not found: {clips / 'missing.mp4'}; 1 pair skipped"]
        * 2
    )


def test_video_failing_during_an_epoch_is_replaced_and_listed(clips, tmp_path):
    """A video that passed the check but breaks later: its pairs yield the next readable pairs that are not in
    the batch yet (no pair twice in a batch: a false negative for the contrastive loss), batches stay full,
    the epoch ends, and the video is counted and listed."""
    for i in range(4):
        shutil.copy(clips / f"good{i}.mp4", tmp_path / f"clip{i}.mp4")
    pairs = [(str(tmp_path / f"clip{i // 2}.mp4"), f"caption {i}") for i in range(8)]  # two captions a video
    bad_list = tmp_path / "bad_videos.txt"
    dataset = VideoTextDataset(pairs, VIEWS, max_words=16, bad_videos=bad_list)
    (tmp_path / "clip1.mp4").write_bytes(b"broken after the check")

    batches = list(DataLoader(dataset, batch_size=4))
    assert [len(b["index"]) for b in batches] == [4, 4]
    assert [b["index"].tolist() for b in batches] == [[0, 1, 4, 5], [4, 5, 6, 7]]
    assert dataset[2]["index"].item() == 4  # one item alone: the next readable pair
    assert all((b["teacher_mask"].sum(1) == 2).all() for b in batches)  # 2 s at one frame a second; never empty
    assert list(dataset.failed) == [str(tmp_path / "clip1.mp4")]
    lines = bad_list.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'clip1.mp4'}\tcannot open video")

    strict = VideoTextDataset(pairs, VIEWS, max_words=16)
    with pytest.raises(VideoError, match="clip1.mp4"):
        strict[2]


def test_all_videos_failing_is_an_error(clips, tmp_path):
    dataset = VideoTextDataset(
        [(str(clips / "garbage.mp4"), "a"), (str(clips / "empty.mp4"), "b")],
        VIEWS,
        max_words=16,
        bad_videos=tmp_path / "bad_videos.txt",
    )
    with pytest.raises(VideoError, match="no pair left whose video decodes \\(2 of the videos of 2 pairs failed"):
        dataset[0]
    assert len(dataset.failed) == 2


def jsonl_recipe(tmp_path, clips, lines):
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps(line) if isinstance(line, dict) else line for line in lines) + "\n"
    )
    (tmp_path / "test.jsonl").write_text(json.dumps({"video": "good3.mp4", "caption": "test"}) + "\n")
    (tmp_path / "recipe.yaml").write_text(
        json.dumps(
            {
                "name": "bad",
                "output_dir": str(tmp_path / "run"),
                "data": {
                    "format": "jsonl",
                    "train": str(tmp_path / "train.jsonl"),
                    "test": str(tmp_path / "test.jsonl"),
                    "video_root": str(clips),
                    "val_fraction": 0.0,  # every video in the train split, where this file's tests look
                },
            }
        )
    )
    return load_recipe(tmp_path / "recipe.yaml")


def test_run_skips_bad_pairs_lists_them_in_the_run_folder_and_the_log(clips, tmp_path, capsys):
    recipe = jsonl_recipe(
        tmp_path,
        clips,
        [
            {"video": "good0.mp4", "caption": "fine"},
            {"video": "missing.mp4", "caption": "gone"},
            {"video": "good1.mp4", "caption": ""},
            {"video": "truncated.mp4", "caption": "cut"},
            {"video": "good2.mp4", "caption": "fine too"},
            {"video": "missing.mp4", "caption": "gone again"},
        ],
    )
    data = open_datasets(start_run(recipe))
    assert data["train"].captions == ["fine", "fine too"]
    assert len(data["test"]) == 1
    lines = (tmp_path / "run" / "bad_videos.txt").read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(clips / "missing.mp4"), str(clips / "truncated.mp4")]
    assert f"{tmp_path / 'train.jsonl'}, line 2: video file not found" in lines[0]
    log = capsys.readouterr().err
    assert "data: train: 4 pairs skipped, 2 bad videos" in log
    assert f"{tmp_path / 'train.jsonl'}, line 3: empty caption; pair skipped" in log
    assert f"{tmp_path / 'train.jsonl'}, line 4: cannot open video" in log


def test_run_stops_on_malformed_annotations(clips, tmp_path):
    recipe = jsonl_recipe(tmp_path, clips, [json.dumps({"video": "good0.mp4", "caption": "fine"}), "not json"])
    with pytest.raises(ValueError, match=f"{tmp_path / 'train.jsonl'}, line 2: not JSON"):
        open_datasets(start_run(recipe))
