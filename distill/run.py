"""Command line: `accelerate launch distill/run.py RECIPE.yaml [--dry-run] [dotted.key=value ...]` (or `c4cd run`).

Parses, loads the recipe and runs its stages; the work lives in `distill.pipeline`, imported after parsing so
that `--help` answers at once. `--dry-run` checks and prints what a run would do, find and cost, and trains
nothing (`distill.dryrun`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, Python puts this folder first on sys.path, where our module names (config,
    # evaluate, train) would shadow installed packages of the same name.
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from distill.core.commands import new_parser  # noqa: E402
from distill.recipe import parse_recipe_args  # noqa: E402


def cpu_threads_hint() -> str | None:
    """How to use every core, when one process on a machine without a GPU computes on fewer threads than there
    are cores (`accelerate launch` pins one thread a process unless told otherwise); None otherwise."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = torch.get_num_threads()
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) > 1 or threads >= cores:
        return None
    return (
        f"cpu: computing on {threads} of {cores} cores (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}); "
        f"one process uses them all with `c4cd run ...`, `python distill/run.py ...` or "
        f"`accelerate launch --num_cpu_threads_per_process {cores} distill/run.py ...`"
    )


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`prog`: the name usage lines give (`c4cd run`); by default the script's."""
    parser = new_parser(prog, __doc__.splitlines()[0])
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
    if hint := cpu_threads_hint():
        print(hint, flush=True)
    from distill.pipeline import run_recipe  # torch, timm, open_clip: after parsing

    run = run_recipe(recipe)
    if run.accelerator.is_main_process:
        for name in ("report.md", "report.json", "student.safetensors"):
            if (run.dir / name).exists():
                print(f"{name}: {run.dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
