"""The harder style of the synthetic dataset (`data.synthetic.style: scenes`): the stories and captions of
`shapes`, told in scenes with what real video has and the plain style lacks.

- Texture: the backdrop is stripes, a checkerboard or waves in two dull colours, and every object is
  patterned in a darker shade of its colour, so colour and shape must be read through texture.
- Camera motion: the camera pans up to `CAMERA` of the frame over a clip, so the whole backdrop slides
  and "moves left" means against the scene, not on the screen alone (the object's own travel is larger,
  so the two agree in sign).
- Distractors: one or two other objects, in colours the caption does not name, drifting in any
  direction: a model must bind colour and shape to the motion it reports.
- Near-duplicates: half the scenes come with a twin right after them, the same scene with the first
  motion reversed (or, for "moves A, then it moves B", the two motions in the other order): captions one
  or two words apart, clips that differ only in direction or order.
"""

from __future__ import annotations

import math

import numpy as np

from distill.data.stories import COLOURS, DIRECTIONS, SHAPES, camera_shift, caption_of, pattern, sample_story

CAMERA = 0.1  # the longest camera pan over a clip, as a fraction of the frame size
SIZES = {"small": 0.09, "large": 0.15}  # smaller than `shapes`': a scene holds more objects
TRAVEL = 0.25  # one motion's distance; over 2 * CAMERA, so screen and scene directions agree in sign
DISTRACTORS = 2  # at most this many distractors a scene, at least one
DRIFT = 0.15  # a distractor's longest drift over a clip
TWIN_SHARE = 0.5  # the share of scenes followed by their twin
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def sample_texture(rng: np.random.Generator, size: int, kinds=("stripes", "checker", "waves")) -> dict:
    """A random texture of period 3-14% of the frame."""
    return {
        "kind": str(rng.choice(kinds)),
        "angle": float(rng.uniform(0, np.pi)),
        "period": float(rng.uniform(0.03, 0.14) * size),
        "ratio": float(rng.uniform(0.5, 1.5)),
    }


def sample_backdrop(rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8 `[size + 2m, size + 2m, 3]`: a textured backdrop with margin `m` for the camera to pan over.
    Its two colours are near-greys (a tint of at most 15 a channel) 20-50 levels apart: edges and
    patterns everywhere, but no hue a named colour could be mistaken for."""
    margin = math.ceil(CAMERA * size) + 1
    side = size + 2 * margin
    y, x = np.mgrid[0:side, 0:side] + 0.5
    texture = sample_texture(rng, size)
    texture["period"] *= 2  # coarser than the objects' patterns
    low = rng.integers(20, 110) + rng.integers(-15, 16, size=3)
    high = low + rng.integers(20, 51)
    weight = pattern(x, y, texture)[..., None]
    return np.round(low * (1 - weight) + high * weight).astype(np.uint8)


def motion(story: dict, frames: int) -> np.ndarray:
    """`[frames, 2]`: where the named object is on screen, relative to its first-frame position."""
    half = frames // 2
    first = np.array(DIRECTIONS[story["direction"]]) * story["travel"]
    second = np.array(DIRECTIONS.get(story.get("direction2"), (0, 0))) * story["travel"]
    t = np.arange(frames)[:, None]
    progress1 = np.minimum(t / (half - 1), 1.0)
    progress2 = np.maximum(0.0, (t - half) / (frames - half - 1))
    return progress1 * first + progress2 * second - camera_shift(story["camera"], t[:, 0], frames)


def twin_of(story: dict) -> dict:
    """The same scene with the first motion reversed, or, for two motions, the two in the other order."""
    twin = dict(story)
    if story["event"] == "moves":
        twin["direction"], twin["direction2"] = story["direction2"], story["direction"]
    else:
        twin["direction"] = OPPOSITE[story["direction"]]
    return twin


def place(rng: np.random.Generator, paths: list[np.ndarray], radius: float, size: int) -> np.ndarray | None:
    """A first-frame position from which every path (`[frames, 2]` offsets) keeps a shape of `radius`
    inside the frame, or None when there is none."""
    points = np.concatenate(paths)
    low = radius + 1 - points.min(axis=0)
    high = size - radius - 1 - points.max(axis=0)
    return rng.uniform(low, high) if np.all(low <= high) else None


def sample_scene(rng: np.random.Generator, size: int, frames: int) -> list[tuple[dict, str]]:
    """One scene as `[(story, caption)]`, or two when it comes with its twin (`TWIN_SHARE`)."""
    while True:
        story, _ = sample_story(rng, size, sizes=SIZES, travel=TRAVEL)
        angle = rng.uniform(0, 2 * np.pi)
        story["camera"] = rng.uniform(0.3, 1.0) * CAMERA * size * np.array([math.cos(angle), math.sin(angle)])
        told = [story, twin_of(story)] if rng.random() < TWIN_SHARE else [story]
        start = place(rng, [motion(s, frames) for s in told], story["radius"], size)
        if start is not None:
            break
    shift = camera_shift(story["camera"], np.arange(frames), frames)
    story["start"] = start
    story["other_centre"] = place(rng, [-shift[frames // 2 :]], story["other_radius"], size)
    story["backdrop"] = sample_backdrop(rng, size)
    story["texture"] = sample_texture(rng, size, kinds=("stripes", "checker"))
    story["other_texture"] = sample_texture(rng, size, kinds=("stripes", "checker"))
    named = {story["colour"], story.get("other_colour")}
    story["distractors"] = []
    for _ in range(rng.integers(1, DISTRACTORS + 1)):
        radius = SIZES[rng.choice(list(SIZES))] * size
        drift = np.array(DIRECTIONS[rng.choice(list(DIRECTIONS))]) * rng.uniform(0, DRIFT) * size
        path = np.arange(frames)[:, None] / (frames - 1) * drift - shift
        story["distractors"].append(
            {
                "shape": str(rng.choice(SHAPES)),
                "colour": str(rng.choice([c for c in COLOURS if c not in named])),
                "radius": radius,
                "drift": drift,
                "start": place(rng, [path], radius, size),
                "texture": sample_texture(rng, size, kinds=("stripes", "checker")),
            }
        )
    told = [story, twin_of(story)] if len(told) == 2 else [story]
    return [(s, caption_of(s)) for s in told]
