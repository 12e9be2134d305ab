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

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from distill.core.commands import add_check_flag, new_parser
from distill.core.schema import DataConfig, Recipe
from distill.data.formats import read_split
from distill.recipe import parse_recipe_args

if TYPE_CHECKING:
    from distill.data.dataset import View
    from distill.data.shards import FrameShards


def check_data(data: DataConfig) -> int:
    """Prints the problems and a summary of both splits; returns the number of problems."""
    from distill.data.checks import check_videos, describe  # torch and decord: after parsing (fast --help)

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


def write_frames(recipe: Recipe, views: dict[str, View]) -> tuple[FrameShards, Path]:
    """Decodes every video of both splits once into the recipe's frame shards, at the views' frame count and
    sizes (the prepare stage calls it too); a killed prepare continues where it stopped.

    Raises:
        ValueError: a malformed annotation, or a frames folder prepared with other settings.
    """
    from distill.data.checks import read_split_or_stop  # torch and decord: after parsing (fast --help)
    from distill.data.dataset import frame_settings, frames_folder
    from distill.data.shards import prepare_frames

    data = recipe.data
    videos = [pair.video for split in ("train", "test") for pair in read_split_or_stop(data, split).pairs]
    folder = frames_folder(data, recipe.run_dir)
    settings = frame_settings(data, views)
    return prepare_frames(
        videos, folder, settings, encoding=data.prepared_encoding, workers=data.num_workers, progress=True
    ), folder


def prepare(recipe: Recipe) -> int:
    """Writes the frame shards of both splits; returns 2 when they cannot be written, else 0."""
    if recipe.data.format == "synthetic":
        from distill.data.synthetic import generate_synthetic

        generate_synthetic(recipe.data.root, recipe.data.synthetic)  # what the data stage does; reused when there
    # A teacher.source brings its own input size, the teacher view's; only recipes with one pay for loading it.
    from distill.context import given_teacher, run_views

    views = run_views(recipe, given_teacher(recipe))
    try:
        shards, folder = write_frames(recipe, views)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    size = sum((folder / name).stat().st_size for name in shards.shards)
    print(
        f"{len(shards)} videos in {len(shards.shards)} shards in {folder}: {size / 1e6:.1f} MB of {shards.encoding} "
        f"frames, {max(view.max_frames for view in views.values())} frames a clip at sizes {shards.sizes}"
    )
    if shards.failed:
        print(f"{len(shards.failed)} videos could not be decoded (training skips their pairs):", file=sys.stderr)
        for video, error in shards.failed.items():
            print(f"  {video}: {error}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = new_parser("python -m distill.prepare", __doc__.splitlines()[0])
    add_check_flag(parser)
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
