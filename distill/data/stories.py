"""The stories both synthetic styles tell: objects, colours, motions and events, their captions, and how
shapes and textures are painted (`distill.data.synthetic` renders them plainly, `distill.data.scenes` in
scenes)."""

from __future__ import annotations

import math

import numpy as np

COLOURS = {
    "red": (225, 40, 40),
    "green": (40, 200, 70),
    "blue": (60, 90, 240),
    "yellow": (235, 215, 40),
    "purple": (170, 70, 215),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.11, "large": 0.2}  # radius as a fraction of the frame size
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SECOND_EVENTS = ("appears", "turns", "moves", "disappears")
TRAVEL = 0.3  # distance of one motion, as a fraction of the frame size
# The captions the stories can have: sizes x colours x shapes x directions x second events (another shape
# appears: 4 colours x 3 shapes; turns: 4 colours; moves: 3 directions; disappears), so at most this many
# clips a split.
CAPTIONS = len(SIZES) * len(COLOURS) * len(SHAPES) * len(DIRECTIONS) * ((len(COLOURS) - 1) * (len(SHAPES) + 1) + 4)
SHADE = 0.7  # a textured object's pattern in this fraction of its colour (`scenes`)


def draw(canvas: np.ndarray, shape: str, centre, radius: float, colour, texture: dict | None = None) -> None:
    """Paints one filled shape into an `[H, W, 3]` uint8 canvas, in place; with a `texture`
    (`pattern`), the pattern's pixels in a darker shade of `colour` (`SHADE`), moving with the shape."""
    h, w, _ = canvas.shape
    y, x = np.mgrid[0:h, 0:w] + 0.5
    dx, dy = x - centre[0], y - centre[1]
    if shape == "circle":
        inside = dx**2 + dy**2 <= radius**2
    elif shape == "square":
        inside = (np.abs(dx) <= radius * 0.85) & (np.abs(dy) <= radius * 0.85)
    else:  # an upward triangle: below the two slanted edges, above the base
        inside = (dy <= radius * 0.8) & (dy >= -radius + 2 * np.abs(dx))
    canvas[inside] = colour
    if texture is not None:
        canvas[inside & (pattern(dx, dy, texture) > 0.5)] = (np.array(colour) * SHADE).astype(np.uint8)


def pattern(dx: np.ndarray, dy: np.ndarray, texture: dict) -> np.ndarray:
    """A texture's weight in [0, 1] at offsets `(dx, dy)` from its origin (`scenes.sample_texture`):
    stripes and checkerboards are 0 or 1, waves are smooth."""
    a = texture["angle"]
    u = (dx * math.cos(a) + dy * math.sin(a)) / texture["period"]
    if texture["kind"] == "stripes":
        return (u % 1.0 < 0.5).astype(np.float32)
    v = (-dx * math.sin(a) + dy * math.cos(a)) / texture["period"]
    if texture["kind"] == "checker":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    return (0.5 + 0.25 * (np.sin(2 * np.pi * u) + np.sin(2 * np.pi * v * texture["ratio"]))).astype(np.float32)


def sample_story(rng: np.random.Generator, size: int, sizes=SIZES, travel=TRAVEL) -> tuple[dict, str]:
    """Draws the objects and events of one clip and writes its caption; `sizes` (radius as a fraction of
    the frame for each size word) and `travel` (one motion's distance) are the `shapes` style's unless set."""
    story = {
        "size": rng.choice(list(sizes)),
        "colour": rng.choice(list(COLOURS)),
        "shape": rng.choice(SHAPES),
        "direction": rng.choice(list(DIRECTIONS)),
        "event": rng.choice(SECOND_EVENTS),
        "background": rng.integers(0, 90, size=3),
    }
    radius = sizes[story["size"]] * size
    if story["event"] in ("appears", "turns"):
        story["other_colour"] = rng.choice([c for c in COLOURS if c != story["colour"]])
    if story["event"] == "appears":
        story["other_shape"] = rng.choice(SHAPES)
    elif story["event"] == "moves":
        story["direction2"] = rng.choice([d for d in DIRECTIONS if d != story["direction"]])

    # Start where both motions stay inside the frame.
    travel = travel * size
    steps = [np.array(DIRECTIONS[story["direction"]])]
    if story["event"] == "moves":
        steps.append(np.array(DIRECTIONS[story["direction2"]]))
    path = np.cumsum([np.zeros(2)] + [s * travel for s in steps], axis=0)
    low = radius + 1 - path.min(axis=0)
    high = size - radius - 1 - path.max(axis=0)
    story["start"] = rng.uniform(low, high)
    story["travel"] = travel
    story["radius"] = radius
    other_radius = sizes[rng.choice(list(sizes))] * size
    story["other_radius"] = other_radius
    story["other_centre"] = rng.uniform(other_radius + 1, size - other_radius - 1, size=2)
    return story, caption_of(story)


def caption_of(story: dict) -> str:
    """The caption of a story of `sample_story`: "a small red circle moves left, then ..."."""
    caption = f"a {story['size']} {story['colour']} {story['shape']} moves {story['direction']}, then "
    if story["event"] == "appears":
        return caption + f"a {story['other_colour']} {story['other_shape']} appears"
    if story["event"] == "turns":
        return caption + f"it turns {story['other_colour']}"
    if story["event"] == "moves":
        return caption + f"it moves {story['direction2']}"
    return caption + "it disappears"


def camera_shift(camera: np.ndarray, t, frames: int) -> np.ndarray:
    """Whole pixels `(x, y)` the camera has moved by frame `t` (an int, or an array of them: `[..., 2]`) of
    a pan of `camera` over the clip."""
    return np.round(np.asarray(t)[..., None] / (frames - 1) * camera).astype(int)
