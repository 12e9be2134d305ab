"""Frame shards (`python -m distill.prepare RECIPE`): the same clips as decoding, a resumable prepare, used by
a run only when prepared with its settings; and DataLoader workers that do not change the batches."""

import json

import pytest
import torch
from tiny import STUDENT, TEACHER

import distill.data.shards as shards_module
from distill.context import open_datasets, start_run
from distill.core.schema import SyntheticConfig
from distill.data.checks import check_videos
from distill.data.dataset import VideoTextDataset, View, frame_settings
from distill.data.formats import Pair, read_split
from distill.data.shards import FORMAT, decode_tile, encode_tile, open_shards, prepare_frames
from distill.data.synthetic import generate_synthetic
from distill.data.video import VideoError, load_frames, resize_crop
from distill.pipeline import run_recipe
from distill.prepare import main
from distill.recipe import load_recipe
from distill.training.train import training_loader

# 8 s at 4 fps; the teacher takes 8 frames at 32 px, the student 4 of them at 16 px.
CONFIG = SyntheticConfig(num_train=7, num_test=3, size=32, fps=4, seconds=8, seed=1)
VIEWS = {"teacher": View(8, 32), "student": View(4, 16)}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("shards") / "clips", CONFIG)


@pytest.fixture
def recipe(root, tmp_path):
    """A jsonl recipe over the synthetic clips whose views are VIEWS; its shards go to output_dir/frames, as
    JPEG (auto would store these small frames raw)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"name: shards\noutput_dir: {tmp_path / 'run'}\nstages: [data]\n"
        f"data: {{format: jsonl, train: {root / 'train.jsonl'}, test: {root / 'test.jsonl'}, "
        f"video_root: {root}, prepared_encoding: jpeg}}\n"
        "teacher: {max_frames: 8, image_size: 32}\nstudent: {max_frames: 4, image_size: 16}\n"
    )
    return path


def datasets(recipe_path, split="train"):
    """The split's dataset decoding the videos, and the same reading the shards of output_dir/frames."""
    r = load_recipe(recipe_path)
    pairs = read_split(r.data, split).pairs
    shards, why = open_shards(r.run_dir / "frames", frame_settings(r.data, VIEWS))
    assert shards is not None, why
    return (VideoTextDataset(pairs, VIEWS, max_words=16), VideoTextDataset(pairs, VIEWS, max_words=16, shards=shards))


def test_raw_shards_give_exactly_the_decoded_clips(recipe, capsys):
    assert main([str(recipe), "data.prepared_encoding=raw"]) == 0
    assert "10 videos in 1 shards" in capsys.readouterr().out
    for split in ("train", "test"):
        decoded, prepared = datasets(recipe, split)
        for i in range(len(decoded)):
            a, b = decoded[i], prepared[i]
            assert a.keys() == b.keys()
            for key in a:
                # Layout too: on some CPUs a convolution rounds differently for another memory format.
                assert torch.equal(a[key], b[key]) and a[key].stride() == b[key].stride(), (split, i, key)
    size = (recipe.parent / "run/frames/shard_00000.bin").stat().st_size
    assert size == 10 * 8 * 3 * (32 * 32 + 16 * 16)  # 10 clips of 8 frames at both sizes, uint8


@pytest.mark.parametrize("teacher_size, encoding", [(64, "raw"), (80, "jpeg")])
def test_auto_encoding_stores_small_frames_raw(recipe, capsys, teacher_size, encoding):
    assert main([str(recipe), "data.prepared_encoding=auto", f"teacher.image_size={teacher_size}"]) == 0
    assert f"MB of {encoding} frames" in capsys.readouterr().out
    assert json.loads((recipe.parent / "run/frames/manifest.json").read_text())["encoding"] == encoding


def test_jpeg_shards_are_close_and_smaller(recipe):
    assert main([str(recipe)]) == 0
    manifest = json.loads((recipe.parent / "run/frames/manifest.json").read_text())
    assert manifest["format"] == FORMAT and manifest["encoding"] == "jpeg"
    assert manifest["settings"]["sizes"] == [16, 32]
    assert manifest["settings"]["max_frames"] == 8 and len(manifest["videos"]) == 10 and not manifest["failed"]
    assert all(len(lengths) == 2 and k == 8 for _, _, k, lengths in manifest["videos"].values())  # a tile a size
    decoded, prepared = datasets(recipe)
    errors = []
    for i in range(len(decoded)):
        a, b = decoded[i], prepared[i]
        for view in ("teacher", "student"):
            assert torch.equal(a[f"{view}_mask"], b[f"{view}_mask"])
            errors.append((a[f"{view}_video"] - b[f"{view}_video"]).abs().mean().item())
    # In normalised units one level of 255 is about 0.015. JPEG's 4:2:0 chroma blurs the sharp colour edges
    # of these 16 and 32 px frames by 1-6 levels on average (BENCHMARKS.md: under 5 on noise-like 224 px video).
    assert max(errors) < 0.1 and sum(errors) / len(errors) < 0.06, errors
    size = (recipe.parent / "run/frames/shard_00000.bin").stat().st_size
    assert size < 10 * 8 * 3 * (32 * 32 + 16 * 16) / 4  # under a quarter of raw even at these sizes


@pytest.mark.parametrize("size", [16, 32, 36, 224])
def test_jpeg_tile_decodes_to_the_frames_within_jpeg_error(root, size):
    """A clip's frames side by side in one JPEG come back as `[k, 3, s, s]` within JPEG's error. For sizes
    that are multiples of 16 (the 4:2:0 block) every column but each frame's first and last is the pixels a
    JPEG of that frame alone gives; there chroma is interpolated with the neighbouring frame."""
    frames = resize_crop(load_frames(str(root / "videos/train_00002.mp4"), max_frames=8), size)  # 8 3 s s
    tile = encode_tile(frames)
    decoded = decode_tile(tile, 8, size)
    assert decoded.dtype == torch.uint8 and decoded.shape == (8, 3, size, size) and decoded.is_contiguous()
    error = (decoded.float() - frames.float()).abs()
    # Levels of 255. JPEG's 4:2:0 chroma blurs the sharp colour edges of these small synthetic frames.
    assert error.mean() < 3 and error.max() < 160, (error.mean(), error.max())
    alone = torch.cat([decode_tile(encode_tile(frame[None]), 1, size) for frame in frames])
    assert abs(error.mean() - (alone.float() - frames.float()).abs().mean()) < 0.25  # 0.14 at 36 px, 0.003 at 32
    if size % 16 == 0:
        assert torch.equal(decoded[..., 1:-1], alone[..., 1:-1])
    assert len(tile) < sum(len(encode_tile(frame[None])) for frame in frames)  # one header, not 8


def test_shards_of_another_format_are_refused(recipe, capsys):
    """Shards prepared by an earlier version (a JPEG a frame, no format in the manifest) or in a format this
    version does not know are neither read nor prepared into."""
    assert main([str(recipe)]) == 0
    folder = recipe.parent / "run/frames"
    for found, named in (
        (None, "the format of earlier versions (a JPEG a frame, no format recorded)"),
        ("clip4clip-distill/frame-shards-3", "format clip4clip-distill/frame-shards-3"),
    ):
        for name in ("manifest.json", "shard_00000.json"):
            data = json.loads((folder / name).read_text())
            data.pop("format", None)
            if found is not None:
                data["format"] = found
            (folder / name).write_text(json.dumps(data))
        assert open_datasets(start_run(load_recipe(recipe)))["train"].shards is None
        assert f"the frame shards in {folder} are in {named}, this version reads {FORMAT}" in capsys.readouterr().out
        assert main([str(recipe)]) == 2
        assert f"{folder} holds frame shards in {named}, this version writes {FORMAT}" in capsys.readouterr().err


def test_tile_wider_than_jpeg_allows_is_refused(tmp_path):
    settings = {"max_frames": 300, "framerate": 1, "slice_framepos": 2, "backend": "decord", "sizes": [224]}
    with pytest.raises(ValueError, match="300 frames at 224 px make a JPEG tile 67200 px wide"):
        prepare_frames(["any.mp4"], tmp_path / "frames", settings)


def test_killed_prepare_continues_where_it_stopped(recipe, monkeypatch):
    monkeypatch.setattr(shards_module, "VIDEOS_PER_SHARD", 3)
    r = load_recipe(recipe)
    videos = [p.video for split in ("train", "test") for p in read_split(r.data, split).pairs]
    settings, folder = frame_settings(r.data, VIEWS), r.run_dir / "frames"
    decoded, encode = [], shards_module.encode_clip

    def killed_after_five(video, *args):
        if len(decoded) == 5:
            raise KeyboardInterrupt
        decoded.append(video)
        return encode(video, *args)

    monkeypatch.setattr(shards_module, "encode_clip", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        prepare_frames(videos, folder, settings)
    assert sorted(p.name for p in folder.iterdir()) == [
        "shard_00000.bin",
        "shard_00000.json",
        "shard_00001.bin.partial",
    ]  # no manifest: the run uses none
    assert open_shards(folder, settings)[0] is None
    first = (folder / "shard_00000.bin").stat()

    decoded.clear()
    monkeypatch.setattr(
        shards_module, "encode_clip", lambda video, *args: decoded.append(video) or encode(video, *args)
    )
    shards = prepare_frames(videos, folder, settings)
    assert decoded == videos[3:]  # the finished shard is kept, the partial one redone
    assert (folder / "shard_00000.bin").stat().st_mtime_ns == first.st_mtime_ns
    assert len(shards) == 10 and shards.shards == [f"shard_0000{n}.bin" for n in range(4)]
    assert not list(folder.glob("*.partial"))
    decoded.clear()
    prepare_frames(videos, folder, settings)  # all done: nothing decoded again
    assert decoded == []
    decoded_clip = VideoTextDataset([(videos[4], "x")], VIEWS, max_words=16)[0]
    shard_clip = VideoTextDataset([(videos[4], "x")], VIEWS, max_words=16, shards=shards)[0]
    assert (decoded_clip["teacher_video"] - shard_clip["teacher_video"]).abs().mean() < 0.03


def test_parallel_prepare_writes_the_same_shards(recipe, tmp_path):
    r = load_recipe(recipe)
    videos = [p.video for split in ("train", "test") for p in read_split(r.data, split).pairs]
    settings = frame_settings(r.data, VIEWS)
    one = prepare_frames(videos, tmp_path / "one", settings, encoding="raw")
    two = prepare_frames(videos, tmp_path / "two", settings, encoding="raw", workers=2)
    assert two.videos == one.videos
    assert (tmp_path / "two/shard_00000.bin").read_bytes() == (tmp_path / "one/shard_00000.bin").read_bytes()


def test_run_uses_only_shards_prepared_with_its_settings(recipe, capsys):
    assert open_datasets(start_run(load_recipe(recipe)))["train"].shards is None
    assert "no frame shards in" in capsys.readouterr().out

    assert main([str(recipe), "teacher.max_frames=6"]) == 0  # 6 frames are not the 8 this recipe needs
    assert open_datasets(start_run(load_recipe(recipe)))["train"].shards is None
    assert "prepared with other settings (max_frames 6 there, 8 here)" in capsys.readouterr().out
    assert main([str(recipe)]) == 2  # the folder holds the 6-frame shards: refused, not mixed
    assert "holds frame shards prepared with other settings" in capsys.readouterr().err

    folder = recipe.parent / "other_frames"
    assert main([str(recipe), f"data.prepared={folder}"]) == 0
    data = open_datasets(start_run(load_recipe(recipe, [f"data.prepared={folder}"])))
    train = data["train"]
    assert train.shards is not None and train.shards.folder == folder
    assert f"reading clips from the frame shards (jpeg, 10 videos) in {folder}" in capsys.readouterr().out
    assert data["test"][0]["teacher_video"].shape == (8, 3, 32, 32)


def test_prepare_stage_trains_on_shards_and_gives_the_same_student(recipe, one_thread, capsys):
    """stages [data, prepare, ...]: the datasets, opened after prepare, read its raw shards, which hold exactly
    the decoded frames: the same teacher, student and report as a run without prepare."""
    tiny = [
        *TEACHER,
        *STUDENT,
        "teacher.train.batch_size=4",
        "teacher.train.max_steps=2",
        "train.batch_size=4",
        "train.max_steps=2",
        "eval.batch_size=2",
        "log_with=[]",
        "data.prepared_encoding=raw",
    ]
    runs = {}
    for stages in ("[data,prepare,teacher,distill,evaluate]", "[data,teacher,distill,evaluate]"):
        output = recipe.parent / ("prepared" if "prepare" in stages else "decoded")
        runs[stages] = run_recipe(load_recipe(recipe, [*tiny, f"stages={stages}", f"output_dir={output}"]))
    prepared, decoded = runs.values()
    log = capsys.readouterr().out
    assert f"prepare: 10 videos as raw frames in {recipe.parent / 'prepared' / 'frames'}" in log
    for split in ("train", "test"):
        assert prepared.data[split].shards.folder == recipe.parent / "prepared" / "frames"
        assert prepared.data[split].shards.encoding == "raw"
        assert decoded.data[split].shards is None
    assert prepared.report["student"] == decoded.report["student"]
    assert prepared.report["teacher"] == decoded.report["teacher"]
    a, b = prepared.student.state_dict(), decoded.student.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_video_that_fails_to_decode_is_recorded_and_skipped(root, tmp_path):
    good = [str(root / "videos" / f"train_0000{i}.mp4") for i in range(2)]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 300)
    shards = prepare_frames(
        [good[0], str(broken), good[1]],
        tmp_path / "frames",
        {"max_frames": 8, "framerate": 1, "slice_framepos": 2, "backend": "decord", "sizes": [16, 32]},
    )
    assert len(shards) == 2 and list(shards.failed) == [str(broken)]
    assert str(broken) in shards.failed[str(broken)]
    pairs = [Pair(good[0], "a", "l1"), Pair(str(broken), "b", "l2"), Pair(good[1], "c", "l3")]
    usable, problems = check_videos(pairs, shards=shards)  # the shards' record, without opening the videos
    assert [p.video for p in usable] == [good[0], good[1]] and [p.video for p in problems] == [str(broken)]
    bad_list = tmp_path / "bad.txt"
    dataset = VideoTextDataset([p[:2] for p in pairs], VIEWS, max_words=16, shards=shards, bad_videos=bad_list)
    assert dataset[1]["index"].item() == 2  # the next readable pair
    assert str(broken) in bad_list.read_text()


def test_damaged_shard_raises_video_error(recipe):
    assert main([str(recipe), "data.prepared_encoding=raw"]) == 0
    _, prepared = datasets(recipe)
    shard = recipe.parent / "run/frames/shard_00000.bin"
    shard.write_bytes(shard.read_bytes()[:1000])
    with pytest.raises(VideoError, match="is truncated"):
        prepared.frames(len(prepared) - 1)


def test_workers_give_the_same_batches(recipe):
    r = load_recipe(recipe)
    dataset = VideoTextDataset(read_split(r.data, "train").pairs, VIEWS, max_words=16)
    epochs = {}
    for workers in (0, 2):
        loader = training_loader(dataset, 3, seed=5, num_workers=workers)
        epochs[workers] = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            epochs[workers].append(list(loader))
    assert [len(e) for e in epochs[0]] == [2, 2]
    for batches0, batches2 in zip(epochs[0], epochs[2]):
        for b0, b2 in zip(batches0, batches2):
            assert b0.keys() == b2.keys() and all(torch.equal(b0[k], b2[k]) for k in b0)
    assert not torch.equal(epochs[0][0][0]["index"], epochs[0][1][0]["index"])  # a new order each epoch


@pytest.mark.parametrize("index", [0, 3])
def test_damaged_jpeg_tile_raises_video_error(recipe, index):
    """The start marker of a video's 32 px tile (its second) destroyed: reading that video raises a VideoError
    naming it, the shard and the tile; the other videos still read."""
    assert main([str(recipe)]) == 0
    _, prepared = datasets(recipe)
    video = prepared.video_ids[index]
    _, offset, _, lengths = prepared.shards.videos[video]
    shard = recipe.parent / "run/frames/shard_00000.bin"
    data = bytearray(shard.read_bytes())
    assert data[offset + lengths[0] : offset + lengths[0] + 2] == b"\xff\xd8"  # JPEG's start of image
    data[offset + lengths[0] : offset + lengths[0] + 2] = b"\x00\x00"
    shard.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=f"damaged frames of video {video} in {shard} .the 8-frame tile at 32 px."):
        prepared.frames(index)
    assert prepared.shards.read(video, [16])[16].shape == (8, 3, 16, 16)  # its 16 px tile is intact
    assert prepared.frames(index + 1)[32].shape == (8, 3, 32, 32)  # the other videos still read
