"""The `scenes` style of the synthetic dataset: texture, camera motion, distractors, near-duplicate twins."""

import json

import numpy as np
import pytest
from test_synthetic import CAPTION, decode, read_split

from distill.core.schema import SyntheticConfig
from distill.data.scenes import CAMERA, OPPOSITE, TRAVEL, sample_scene, twin_of
from distill.data.stories import COLOURS, DIRECTIONS, SHADE, camera_shift
from distill.data.synthetic import generate_synthetic, render

SIZE, FRAMES = 64, 16


def scenes(count: int, seed: int = 0) -> list[tuple[dict, str]]:
    rng = np.random.default_rng(seed)
    told = []
    while len(told) < count:
        told += sample_scene(rng, SIZE, FRAMES)
    return told


def find(**wanted) -> dict:
    for story, _ in scenes(400):
        if all(story[key] == value for key, value in wanted.items()):
            return story
    raise AssertionError(f"no scene with {wanted}")


def named_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    """The pixels of a textured object of `colour`: the colour or its pattern's shade."""
    shade = (np.array(COLOURS[colour]) * SHADE).astype(np.uint8)
    return (frame == COLOURS[colour]).all(-1) | (frame == shade).all(-1)


def centroid(frame: np.ndarray, colour: str) -> np.ndarray:
    ys, xs = np.nonzero(named_mask(frame, colour))
    assert len(xs), f"no {colour} pixels"
    return np.array([xs.mean(), ys.mean()])


def test_captions_are_the_shapes_captions_and_twins_differ_in_direction_or_order():
    told = scenes(300)
    assert all(CAPTION.fullmatch(caption) for _, caption in told)
    twins = [(a, b) for (a, _), (b, _) in zip(told, told[1:]) if b["backdrop"] is a["backdrop"]]
    assert 0.25 * len(told) < len(twins) < 0.45 * len(told)  # half the scenes have a twin: a pair per 3 clips
    for a, b in twins:
        if a["event"] == "moves":
            assert (b["direction"], b["direction2"]) == (a["direction2"], a["direction"])
        else:
            assert b["direction"] == OPPOSITE[a["direction"]]
        rest = {k for k in a if k not in ("direction", "direction2")}
        assert all(a[k] is b[k] for k in rest)  # the same scene, every other draw shared


def test_a_twin_starts_on_the_same_frame_and_then_parts():
    story = find(event="turns")
    video, twin = render(story, size=SIZE, frames=FRAMES), render(twin_of(story), size=SIZE, frames=FRAMES)
    np.testing.assert_array_equal(video[0], twin[0])
    assert (video[FRAMES // 2 - 1] != twin[FRAMES // 2 - 1]).any(-1).sum() > 50


def test_the_camera_pans_the_backdrop():
    story = {**find(event="disappears"), "distractors": []}
    video = render(story, size=SIZE, frames=FRAMES)
    margin = (story["backdrop"].shape[0] - SIZE) // 2
    x, y = margin + camera_shift(story["camera"], FRAMES - 1, FRAMES)
    np.testing.assert_array_equal(video[-1], story["backdrop"][y : y + SIZE, x : x + SIZE])  # the object is gone
    moved = camera_shift(story["camera"], FRAMES - 1, FRAMES)
    assert 0.3 * CAMERA * SIZE - 1 <= np.hypot(*moved) <= CAMERA * SIZE + 1
    assert (video[-1] != story["backdrop"][margin : margin + SIZE, margin : margin + SIZE]).any()


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_the_first_motion_goes_the_captioned_way_against_the_scene(direction):
    story = find(direction=direction, event="disappears")
    video = render(story, size=SIZE, frames=FRAMES)
    half = FRAMES // 2
    unit = np.array(DIRECTIONS[direction])
    on_screen = (centroid(video[half - 1], story["colour"]) - centroid(video[0], story["colour"])) @ unit
    in_scene = on_screen + camera_shift(story["camera"], half - 1, FRAMES) @ unit
    assert on_screen > 0  # the object travels further than the camera, so the screen agrees in sign
    assert in_scene == pytest.approx(TRAVEL * SIZE, abs=2.0)  # centroid of a patterned, rasterised shape


def test_distractors_wear_colours_the_caption_does_not_name():
    counts = []
    for story, caption in scenes(200):
        counts.append(len(story["distractors"]))
        for other in story["distractors"]:
            assert other["colour"] not in caption
            assert other["colour"] in COLOURS
    assert set(counts) == {1, 2}


def test_textures_show_on_backdrop_and_objects():
    story = find(event="disappears")
    frame = render(story, size=SIZE, frames=FRAMES)[0]
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 4
    mask = named_mask(frame, story["colour"])
    bright = (frame == COLOURS[story["colour"]]).all(-1)
    assert 0.2 < bright.sum() / mask.sum() < 0.8  # about half the shape in its pattern's shade


def test_generated_scenes_decode_with_distinct_captions(tmp_path):
    config = SyntheticConfig(num_train=9, num_test=3, size=32, fps=4, seconds=4, style="scenes")
    root = generate_synthetic(tmp_path / "scenes", config)
    assert json.loads((root / "manifest.json").read_text())["settings"]["style"] == "scenes"
    train = read_split(root, "train")
    assert [item["video"] for item in train] == [f"videos/train_{i:05d}.mp4" for i in range(9)]
    assert len({item["caption"] for item in train}) == 9
    # A twin and its scene share a group (the scene's first file name), so they share a split.
    groups = [item.get("group") for item in train]
    twins = [(i, g) for i, g in enumerate(groups) if g is not None]
    assert twins and all(groups.count(g) == 2 for _, g in twins)
    assert all(g == f"train_{i:05d}.mp4" or g == groups[i - 1] == f"train_{i - 1:05d}.mp4" for i, g in twins)
    frames = decode(root / train[0]["video"]).get_batch(list(range(16))).asnumpy()
    assert frames.shape == (16, 32, 32, 3) and frames.std() > 10
    shapes = generate_synthetic(tmp_path / "shapes", SyntheticConfig(**{**vars(config), "style": "shapes"}))
    assert [i["caption"] for i in read_split(shapes, "train")] != [i["caption"] for i in train]


def test_a_dataset_written_before_styles_is_still_reused(tmp_path):
    config = SyntheticConfig(num_train=1, num_test=1, size=32, fps=2, seconds=2)
    root = generate_synthetic(tmp_path / "old", config)
    manifest = json.loads((root / "manifest.json").read_text())
    del manifest["settings"]["style"]
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert generate_synthetic(root, config) == root
    with pytest.raises(ValueError, match="data.root"):
        generate_synthetic(root, SyntheticConfig(**{**vars(config), "style": "scenes"}))
