"""Command line: `accelerate launch distill/run.py RECIPE.yaml [dotted.key=value ...]`.

Parses, loads the recipe and runs its stages; the work lives in `distill.pipeline`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts this folder first on sys.path, where our module names (config,
    # evaluate, train) would shadow installed packages of the same name.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from distill.config import RecipeError  # noqa: E402
from distill.pipeline import run_recipe  # noqa: E402
from distill.recipe import load_recipe  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.max_steps=20")
    args = parser.parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run = run_recipe(recipe)
    if run.accelerator.is_main_process:
        for name in ("report.md", "report.json", "student.safetensors"):
            if (run.dir / name).exists():
                print(f"{name}: {run.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
