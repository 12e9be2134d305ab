"""Command line: `accelerate launch distill/run.py RECIPE.yaml [--dry-run] [dotted.key=value ...]`.

Parses, loads the recipe and runs its stages; the work lives in `distill.pipeline`. `--dry-run` checks and
prints what a run would do, find and cost, and trains nothing (`distill.dryrun`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts this folder first on sys.path, where our module names (config,
    # evaluate, train) would shadow installed packages of the same name.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from distill.pipeline import run_recipe  # noqa: E402
from distill.recipe import parse_recipe_args  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the recipe, data and models; print the stages, pairs, costs and disk; train nothing",
    )
    args, recipe = parse_recipe_args(parser, argv)
    if recipe is None:
        return 2
    if args.dry_run:
        from distill.dryrun import dry_run  # builds both models; only a dry run pays for it

        return dry_run(recipe)
    run = run_recipe(recipe)
    if run.accelerator.is_main_process:
        for name in ("report.md", "report.json", "student.safetensors"):
            if (run.dir / name).exists():
                print(f"{name}: {run.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
