"""Command line: `python -m distill.prepare --check RECIPE.yaml [dotted.key=value ...]`.

`--check` reads the annotations of both splits and opens every video the way training will, lists every
problem (malformed annotation line, empty caption, missing or broken video) and exits 1 if there is any,
0 with a summary otherwise. A recipe holding only `name`, `output_dir` and `data` is enough.
"""
from __future__ import annotations

import argparse
import sys

from distill.config import RecipeError
from distill.data.checks import check_videos, describe
from distill.data.formats import read_split
from distill.recipe import DataConfig, load_recipe


def check_data(data: DataConfig) -> int:
    """Prints the problems and a summary of both splits; returns the number of problems."""
    total = 0
    for split in ("train", "test"):
        found = read_split(data, split)
        pairs, bad = check_videos(found.pairs, backend=data.backend, progress=True)
        problems = found.problems + bad
        total += len(problems)
        videos = len({pair.video for pair in pairs})
        print(f"{split}: {len(pairs)} pairs of {videos} videos are usable; {len(problems)} problems"
              + (":" if problems else ""))
        for line in describe(problems):
            print(line)
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only inspect: list every problem of the annotations and videos")
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. data.video_root=videos")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not args.check:
        print("error: preparing frame shards is not available yet; `python -m distill.prepare --check RECIPE` "
              "checks the dataset, and training reads the videos directly", file=sys.stderr)
        return 2
    problems = check_data(recipe.data)
    if problems:
        print(f"{problems} problems found; training would skip the pairs above or, for malformed annotations, "
              "stop", file=sys.stderr)
        return 1
    print("no problems found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
