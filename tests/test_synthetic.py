import json
import re

import decord
import numpy as np
import pytest

from distill.core.schema import SyntheticConfig
from distill.data.stories import CAPTIONS, COLOURS, DIRECTIONS, SECOND_EVENTS, SHAPES, SIZES, draw, sample_story
from distill.data.synthetic import generate_synthetic, render

# 32 px: decord mis-reads some small H.264 widths (8, 12, 16, 24, 48, 72 px come back with extra channels).
CONFIG = SyntheticConfig(num_train=6, num_test=4, size=32, fps=4, seconds=4, seed=0)
FRAMES = 16

COLOUR = "|".join(COLOURS)
DIRECTION = "|".join(DIRECTIONS)
CAPTION = re.compile(
    rf"a (?P<size>{'|'.join(SIZES)}) (?P<colour>{COLOUR}) (?P<shape>{'|'.join(SHAPES)}) "
    rf"moves (?P<direction>{DIRECTION}), then "
    rf"(?:a (?P<other_colour>{COLOUR}) (?:{'|'.join(SHAPES)}) (?P<appears>appears)"
    rf"|it (?P<turns>turns) (?P<turn_colour>{COLOUR})"
    rf"|it (?P<moves>moves) (?P<direction2>{DIRECTION})"
    rf"|it (?P<disappears>disappears))"
)


def read_split(root, split):
    return [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]


def decode(path):
    return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return generate_synthetic(tmp_path_factory.mktemp("synthetic") / "demo", CONFIG)


# generate_synthetic: layout, determinism, reuse


def test_layout_and_counts(dataset):
    assert sorted(p.name for p in dataset.iterdir()) == ["manifest.json", "test.jsonl", "train.jsonl", "videos"]
    assert json.loads((dataset / "manifest.json").read_text())["settings"] == {
        "num_train": 6,
        "num_test": 4,
        "size": 32,
        "fps": 4,
        "seconds": 4,
        "seed": 0,
        "style": "shapes",
    }
    train, test = read_split(dataset, "train"), read_split(dataset, "test")
    assert [item["video"] for item in train] == [f"videos/train_{i:05d}.mp4" for i in range(6)]
    assert [item["video"] for item in test] == [f"videos/test_{i:05d}.mp4" for i in range(4)]
    assert len(list((dataset / "videos").iterdir())) == 10
    assert all(CAPTION.fullmatch(item["caption"]) for item in train + test)


def test_videos_decode_to_fps_times_seconds_frames(dataset):
    for item in read_split(dataset, "train") + read_split(dataset, "test"):
        reader = decode(dataset / item["video"])
        assert len(reader) == FRAMES
        assert reader.get_avg_fps() == pytest.approx(CONFIG.fps)
        assert reader.get_batch(list(range(FRAMES))).shape == (FRAMES, 32, 32, 3)


def all_frames(root) -> dict[str, np.ndarray]:
    videos = sorted((root / "videos").iterdir())
    return {p.name: decode(p).get_batch(list(range(FRAMES))).asnumpy() for p in videos}


def test_same_seed_same_dataset_other_seed_other_captions(dataset, tmp_path):
    first = all_frames(dataset)  # decoded first: with x264 mbtree on, a decode in between changed small clips
    again = generate_synthetic(tmp_path / "again", CONFIG)
    for split in ("train", "test"):
        assert read_split(again, split) == read_split(dataset, split)
    second = all_frames(again)
    assert list(second) == list(first)
    for name in first:
        np.testing.assert_array_equal(second[name], first[name], err_msg=name)

    other = generate_synthetic(tmp_path / "other", SyntheticConfig(**{**vars(CONFIG), "seed": 1}))
    assert [i["caption"] for i in read_split(other, "train")] != [i["caption"] for i in read_split(dataset, "train")]
    # The two splits draw from different streams of the same seed.
    assert [i["caption"] for i in read_split(dataset, "train")][:4] != [
        i["caption"] for i in read_split(dataset, "test")
    ]


def test_reuse_does_not_rewrite(dataset):
    before = {p: p.stat().st_mtime_ns for p in dataset.rglob("*")}
    assert generate_synthetic(dataset, CONFIG) == dataset
    assert {p: p.stat().st_mtime_ns for p in dataset.rglob("*")} == before


def test_other_config_on_same_root_is_refused(dataset):
    with pytest.raises(ValueError, match="data.root"):
        generate_synthetic(dataset, SyntheticConfig(**{**vars(CONFIG), "num_train": 7}))


def test_dataset_of_an_earlier_generator_is_refused(dataset, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    manifest = json.loads((dataset / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({"settings": manifest["settings"]}))  # version 1 had no version
    with pytest.raises(ValueError, match="version 1 of the generator"):
        generate_synthetic(old, CONFIG)


def test_non_empty_folder_without_manifest_is_refused(tmp_path):
    root = tmp_path / "busy"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="no manifest.json"):
        generate_synthetic(root, CONFIG)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def test_empty_existing_folder_is_filled(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    small = SyntheticConfig(num_train=1, num_test=1, size=32, fps=2, seconds=2)
    generate_synthetic(root, small)
    assert (root / "manifest.json").exists() and len(read_split(root, "train")) == 1


def test_leftover_partial_from_a_killed_run(tmp_path):
    root = tmp_path / "demo"
    partial = tmp_path / "demo.partial"
    (partial / "videos").mkdir(parents=True)
    (partial / "videos/train_00000.mp4").write_bytes(b"half a video")
    (partial / "train.jsonl").write_text('{"video": "videos/train_00000.mp4", "caption": "stale"}\n')
    small = SyntheticConfig(num_train=2, num_test=1, size=32, fps=2, seconds=2)
    generate_synthetic(root, small)
    assert not partial.exists()
    assert len(read_split(root, "train")) == 2
    assert all(CAPTION.fullmatch(item["caption"]) for item in read_split(root, "train"))
    assert len(decode(root / "videos/train_00000.mp4")) == 4


# captions


def test_each_split_has_variety(tmp_path):
    root = generate_synthetic(
        tmp_path / "many", SyntheticConfig(num_train=40, num_test=40, size=32, fps=2, seconds=2, seed=0)
    )
    for split in ("train", "test"):
        matches = [CAPTION.fullmatch(item["caption"]) for item in read_split(root, split)]
        assert all(matches)
        events = {next(e for e in SECOND_EVENTS if m[e]) for m in matches}
        assert events == set(SECOND_EVENTS)
        assert {m["direction"] for m in matches} == set(DIRECTIONS)
        assert len({m["colour"] for m in matches}) > 2 and {m["size"] for m in matches} == set(SIZES)


def test_no_caption_repeats_within_a_split(tmp_path):
    # 150 draws from 2,400 captions repeat one with probability 1 - prod(1 - i / 2400) = 99%: the rule acts.
    root = generate_synthetic(tmp_path / "ties", SyntheticConfig(num_train=150, num_test=10, size=32, fps=2, seconds=2))
    captions = [item["caption"] for item in read_split(root, "train")]
    assert len(set(captions)) == len(captions) == 150
    with pytest.raises(ValueError, match=f"data.synthetic.num_test: at most {CAPTIONS} clips"):
        generate_synthetic(tmp_path / "more", SyntheticConfig(num_test=CAPTIONS + 1))


def test_caption_count_is_every_caption_the_stories_can_have():
    rng = np.random.default_rng(0)
    seen = {sample_story(rng, 32)[1] for _ in range(60_000)}  # coupon collector: 2,400 * ln 2,400 = 19k expected
    assert len(seen) == CAPTIONS == 2400


def test_caption_second_event_differs_from_the_first():
    rng = np.random.default_rng(0)
    for _ in range(200):
        story, caption = sample_story(rng, 32)
        m = CAPTION.fullmatch(caption)
        assert m, caption
        assert (m["direction"], m["colour"], m["shape"], m["size"]) == (
            story["direction"],
            story["colour"],
            story["shape"],
            story["size"],
        )
        if m["turns"]:
            assert m["turn_colour"] != m["colour"]
        if m["appears"]:
            assert m["other_colour"] != m["colour"]
        if m["moves"]:
            assert m["direction2"] != m["direction"]


# rendered frames show the caption


def find_story(seed: int, **wanted) -> dict:
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        story, _ = sample_story(rng, 32)
        if all(story[key] == value for key, value in wanted.items()):
            return story
    raise AssertionError(f"no story with {wanted}")


def mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return (frame == COLOURS[colour]).all(-1)


def centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    """(x, y) mean of the pixels painted in `colour`."""
    ys, xs = np.nonzero(mask(frame, colour))
    assert len(xs), f"no {colour} pixels"
    return np.array([xs.mean(), ys.mean()])


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_first_motion_goes_the_captioned_way(direction):
    for seed in range(3):
        story = find_story(seed, direction=direction, event="disappears")
        video = render(story, size=32, frames=FRAMES)
        path = np.array([centroid(video[t], story["colour"]) for t in range(FRAMES // 2)])
        along = path @ np.array(DIRECTIONS[direction])  # position along the captioned direction
        assert np.all(np.diff(along) > 0)
        assert along[-1] - along[0] == pytest.approx(0.3 * 32, abs=1.0)
        across = path @ np.array(DIRECTIONS[direction])[::-1]
        assert np.ptp(across) < 0.5


def test_time_reversed_left_motion_goes_right():
    story = find_story(0, direction="left", event="turns")
    video = render(story, size=32, frames=FRAMES)
    first_half = video[: FRAMES // 2]
    forward = [centroid(f, story["colour"])[0] for f in first_half]
    backward = [centroid(f, story["colour"])[0] for f in first_half[::-1]]
    assert forward[-1] < forward[0]
    assert backward[-1] > backward[0]
    assert np.all(np.diff(backward) > 0)


def test_second_motion_goes_the_captioned_way():
    for seed in range(3):
        story = find_story(seed, event="moves")
        video = render(story, size=32, frames=FRAMES)
        start, turn, end = (centroid(video[t], story["colour"]) for t in (0, FRAMES // 2, FRAMES - 1))
        assert (turn - start) @ np.array(DIRECTIONS[story["direction"]]) > 8
        assert (end - turn) @ np.array(DIRECTIONS[story["direction2"]]) > 8


def test_disappears():
    for seed in range(3):
        story = find_story(seed, event="disappears")
        video = render(story, size=32, frames=FRAMES)
        assert mask(video[0], story["colour"]).sum() > 0
        assert mask(video[FRAMES // 2 - 1], story["colour"]).sum() > 0
        assert mask(video[-1], story["colour"]).sum() == 0


def test_appears_and_is_never_hidden():
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(300):
        story, _ = sample_story(rng, 32)
        if story["event"] != "appears":
            continue
        seen += 1
        video = render(story, size=32, frames=FRAMES)
        assert mask(video[0], story["other_colour"]).sum() == 0
        assert mask(video[FRAMES // 2 - 1], story["other_colour"]).sum() == 0
        # Drawn on top of the moving object: the whole appearing shape shows in the last frame.
        alone = np.zeros_like(video[-1])
        draw(alone, story["other_shape"], story["other_centre"], story["other_radius"], COLOURS[story["other_colour"]])
        assert mask(video[-1], story["other_colour"]).sum() == mask(alone, story["other_colour"]).sum() > 0
    assert seen > 50


def test_turns_changes_the_colour():
    for seed in range(3):
        story = find_story(seed, event="turns")
        video = render(story, size=32, frames=FRAMES)
        before, after = story["colour"], story["other_colour"]
        assert mask(video[0], before).sum() > 0 and mask(video[0], after).sum() == 0
        assert mask(video[-1], before).sum() == 0
        # The same shape, rasterised at another position: the same area within a few pixels.
        assert mask(video[-1], after).sum() == pytest.approx(mask(video[0], before).sum(), rel=0.1)


def test_render_shape_and_background():
    story = find_story(0, event="disappears")
    video = render(story, size=32, frames=FRAMES)
    assert video.shape == (FRAMES, 32, 32, 3) and video.dtype == np.uint8
    assert (video[-1] == story["background"]).all()
