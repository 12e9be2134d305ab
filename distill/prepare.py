"""Command line: `python -m distill.prepare [--check] RECIPE.yaml [dotted.key=value ...]`.

Without `--check`: decodes every video of both splits once into frame shards (`distill.data.shards`) in
`data.prepared` (default `<output_dir>/frames`), at the frame count and view sizes of the recipe, as
`data.prepared_encoding` (auto, jpeg or raw), with `data.num_workers` decoding processes; the `prepare` stage of a
run does the same. A killed prepare continues where it stopped when run again. Training with the same recipe
then reads the clips from the shards instead of decoding the videos.

`--check` reads the annotations of both splits and opens every video the way training will, lists every
problem (malformed annotation line, empty caption, missing or broken video) and exits 1 if there is any,
0 with a summary otherwise. A recipe holding only `name`, `output_dir` and `data` is enough.
"""

from __future__ import annotations

import argparse
import sys

from distill.data.checks import check_videos, describe
from distill.data.config import DataConfig
from distill.data.dataset import View, frame_settings, frames_folder, recipe_views
from distill.data.formats import read_split
from distill.data.shards import prepare_frames
from distill.recipe import Recipe, parse_recipe_args


def check_data(data: DataConfig) -> int:
    """Prints the problems and a summary of both splits; returns the number of problems."""
    total = 0
    for split in ("train", "test"):
        found = read_split(data, split)
        pairs, bad = check_videos(found.pairs, backend=data.backend, progress=True)
        problems = found.problems + bad
        total += len(problems)
        videos = len({pair.video for pair in pairs})
        print(
            f"{split}: {len(pairs)} pairs of {videos} videos are usable; {len(problems)} problems"
            + (":" if problems else "")
        )
        for line in describe(problems):
            print(line)
    return total


def views(recipe: Recipe) -> dict[str, View]:
    """The views a run of `recipe` reads; a `teacher.source` is loaded for its input size."""
    if recipe.teacher.source is None:
        return recipe_views(recipe)
    from teachers import load_teacher  # only recipes with a teacher file pay for loading it

    return recipe_views(recipe, load_teacher(recipe.teacher.source).arch["vision_cfg"]["image_size"])


def prepare(recipe: Recipe) -> int:
    """Writes the frame shards of both splits; returns 1 if an annotation file is malformed, else 0."""
    data = recipe.data
    if data.format == "synthetic":
        from distill.data.synthetic import generate_synthetic

        generate_synthetic(data.root, data.synthetic)  # what the data stage does; reused when it is there
    videos = []
    for split in ("train", "test"):
        found = read_split(data, split)
        if fatal := [p for p in found.problems if p.fatal]:
            print("\n".join([f"error: malformed {split} annotations:", *describe(fatal)]), file=sys.stderr)
            return 1
        videos += [pair.video for pair in found.pairs]
    settings = frame_settings(data, views(recipe))
    folder = frames_folder(data, recipe.run_dir)
    try:
        shards = prepare_frames(
            videos, folder, settings, encoding=data.prepared_encoding, workers=data.num_workers, progress=True
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum((folder / name).stat().st_size for name in shards.shards)
    print(
        f"{len(shards)} videos in {len(shards.shards)} shards in {folder}: {size / 1e6:.1f} MB of {shards.encoding} "
        f"frames, {settings['max_frames']} frames a clip at sizes {settings['sizes']}"
    )
    if shards.failed:
        print(f"{len(shards.failed)} videos could not be decoded (training skips their pairs):", file=sys.stderr)
        for video, error in shards.failed.items():
            print(f"  {video}: {error}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only inspect: list every problem of the annotations and videos"
    )
    args, recipe = parse_recipe_args(parser, argv)
    if recipe is None:
        return 2
    if not args.check:
        return prepare(recipe)
    problems = check_data(recipe.data)
    if problems:
        print(
            f"{problems} problems found; training would skip the pairs above or, for malformed annotations, stop",
            file=sys.stderr,
        )
        return 1
    print("no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
