"""The embedded default dataset: captioned .mp4 clips of coloured shapes, generated from a seed.

Every clip tells two events in order, and its caption says them in that order:
"a small red circle moves left, then a blue square appears". The first event is always a motion, so its
direction can only be read from the order of the frames: an orderless model (one frame, or a mean over
frames) sees "moves left" and "moves right" alike, and "appears" and "disappears" alike.

No caption repeats within a split: two test clips with one caption would tie, and cap R@1 below 100.
Two styles tell the same stories: `shapes`, flat colours on a plain background with a still camera (the
demo's), and `scenes`, with textures, camera motion, distractors and near-duplicates (`distill.data.scenes`).

Layout under `root`: `videos/{split}_{i:05d}.mp4`, `train.jsonl` and `test.jsonl` (one
`{"video", "caption"}` object a line, and the `group` of a scenes twin; paths relative to root, the same
layout as `data.format: jsonl`),
and `manifest.json` with the settings, so a later run reuses the dataset or refuses one made otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from distill.data.config import SyntheticConfig
from distill.files import atomic_dir

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
VERSION = 2  # of what a seed generates; 2: distinct captions within a split
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


def render(story: dict, *, size: int, frames: int) -> np.ndarray:
    """Renders a story as uint8 `[frames, size, size, 3]`: event one in the first half, event two after.

    A `scenes` story (`distill.data.scenes.sample_scene`) adds a textured backdrop seen through a panning
    camera, textured objects and distractors; positions are on screen at the first frame, and whatever
    does not move in the scene moves on screen against the camera.
    """
    half = frames // 2
    video = np.empty((frames, size, size, 3), np.uint8)
    first = np.array(DIRECTIONS[story["direction"]]) * story["travel"]
    backdrop = story.get("backdrop")
    margin = 0 if backdrop is None else (backdrop.shape[0] - size) // 2
    for t in range(frames):
        canvas = video[t]
        shift = camera_shift(story.get("camera", np.zeros(2)), t, frames)
        if backdrop is None:
            canvas[:] = story["background"]
        else:
            x, y = margin + shift
            canvas[:] = backdrop[y : y + size, x : x + size]
        for other in story.get("distractors", ()):  # under the objects the caption names
            centre = other["start"] + t / (frames - 1) * other["drift"] - shift
            draw(canvas, other["shape"], centre, other["radius"], COLOURS[other["colour"]], other["texture"])
        progress1 = min(t / (half - 1), 1.0)
        progress2 = max(0.0, (t - half) / (frames - half - 1))
        centre = story["start"] + progress1 * first
        colour = COLOURS[story["colour"]]
        event = story["event"]
        if event == "moves":
            centre = centre + progress2 * np.array(DIRECTIONS[story["direction2"]]) * story["travel"]
        if event == "turns" and t >= half:
            colour = COLOURS[story["other_colour"]]
        if not (event == "disappears" and t >= half):
            draw(canvas, story["shape"], tuple(centre - shift), story["radius"], colour, story.get("texture"))
        if event == "appears" and t >= half:  # drawn last: the object the caption names is never hidden
            draw(
                canvas,
                story["other_shape"],
                story["other_centre"] - shift,
                story["other_radius"],
                COLOURS[story["other_colour"]],
                story.get("other_texture"),
            )
    return video


def camera_shift(camera: np.ndarray, t, frames: int) -> np.ndarray:
    """Whole pixels `(x, y)` the camera has moved by frame `t` (an int, or an array of them: `[..., 2]`) of
    a pan of `camera` over the clip."""
    return np.round(np.asarray(t)[..., None] / (frames - 1) * camera).astype(int)


def write_mp4(path: Path, video: np.ndarray, fps: int) -> None:
    """Encodes uint8 `[T, H, W, 3]` frames as H.264 (yuv420p) in an .mp4 container."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = video.shape[2], video.shape[1]
        stream.pix_fmt = "yuv420p"
        # mbtree off: on frames of a few macroblocks (sizes 20-44 px) x264's macroblock tree makes the output
        # depend on leftover memory, so the same seed gave different pixels from run to run.
        stream.options = {"crf": "18", "preset": "veryfast", "x264-params": "mbtree=0"}
        stream.thread_count = 1
        for frame in video:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def generate_synthetic(root: str | Path, config: SyntheticConfig) -> Path:
    """Writes the dataset under `root`, or reuses the one already there if it was made with `config`.

    Generation goes to a sibling `.partial` folder that is renamed into place at the end, so a killed run
    never leaves a half-written dataset that a later run would reuse.
    """
    if config.size % 32:
        # decord 0.6 returns corrupt frames for some small widths (8, 16, 24, 48, ...; dmlc/decord#336).
        raise ValueError(f"data.synthetic.size: {config.size} must be a multiple of 32")
    if config.fps * config.seconds < 4:
        raise ValueError("data.synthetic: fps * seconds must be at least 4 frames (two per event)")
    for key in ("num_train", "num_test"):
        if getattr(config, key) > CAPTIONS:
            raise ValueError(f"data.synthetic.{key}: at most {CAPTIONS} clips (the distinct captions a split can have)")
    from distill.data.scenes import sample_scene  # scenes builds on this module's stories

    root = Path(root)
    settings = asdict(config)
    manifest = root / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text())
        found["settings"].setdefault("style", "shapes")  # written before scenes existed
        if found["settings"] != settings or found.get("version", 1) != VERSION:
            made = f"version {found.get('version', 1)} of the generator with {found['settings']}"
            raise ValueError(
                f"data.root {root} holds a synthetic dataset made by {made}, not version {VERSION} with {settings}; "
                "delete it or point data.root elsewhere"
            )
        return root
    if root.exists() and any(root.iterdir()):
        raise ValueError(f"data.root {root} exists and is not a synthetic dataset (no manifest.json)")
    frames = config.fps * config.seconds
    with atomic_dir(root) as partial:
        (partial / "videos").mkdir()
        for split, count, seed_offset in (("train", config.num_train, 0), ("test", config.num_test, 1)):
            rng = np.random.default_rng([config.seed, seed_offset])
            lines, captions = [], set()
            with tqdm(total=count, desc=f"synthetic {split}", unit="video") as progress:
                while len(lines) < count:
                    if config.style == "scenes":  # a scene, or a scene and its twin
                        told = sample_scene(rng, config.size, frames)[: count - len(lines)]
                    else:
                        told = [sample_story(rng, config.size)]
                    if any(caption in captions for _, caption in told):
                        continue
                    # A twin shares its scene's group (the first clip's file name): both go to one split.
                    group = {"group": f"{split}_{len(lines):05d}.mp4"} if len(told) > 1 else {}
                    for story, caption in told:
                        captions.add(caption)
                        name = f"videos/{split}_{len(lines):05d}.mp4"
                        write_mp4(partial / name, render(story, size=config.size, frames=frames), config.fps)
                        lines.append(json.dumps({"video": name, "caption": caption, **group}))
                        progress.update()
            (partial / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
        (partial / "manifest.json").write_text(json.dumps({"settings": settings, "version": VERSION}, indent=1))
    return root
