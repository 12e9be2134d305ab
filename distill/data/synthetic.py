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
from dataclasses import asdict
from pathlib import Path

import av
import numpy as np
from tqdm import tqdm

from distill.core.files import atomic_dir
from distill.core.schema import SyntheticConfig
from distill.data.scenes import sample_scene
from distill.data.stories import CAPTIONS, COLOURS, DIRECTIONS, camera_shift, draw, sample_story

VERSION = 2  # of what a seed generates; 2: distinct captions within a split


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
