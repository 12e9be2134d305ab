"""A run of a recipe, top to bottom: the run starts (Accelerator, run folder, a given teacher), the data
exists (data, prepare), the train and test pairs are opened once, then each listed stage reads the `Run`
and adds what it makes (teacher, student, report). Stages run in this one order; `distill.stages` has them.
"""

from __future__ import annotations

from distill import stages
from distill.context import Run, open_datasets, start_run
from distill.core.schema import Recipe
from distill.training.train import end_training


def run_recipe(recipe: Recipe) -> Run:
    """Runs the recipe's stages in their order and returns the finished run."""
    run = start_run(recipe)
    listed = set(recipe.stages)
    try:
        if "data" in listed:
            stages.make_data(run)
        if "prepare" in listed:
            stages.prepare(run)
        if listed & {"data", "teacher", "cache", "distill", "evaluate"}:
            run.data = open_datasets(run)
        if "teacher" in listed:
            run.teacher = stages.train_teacher(run)
        if "cache" in listed:
            stages.cache_teacher(run)
        if "distill" in listed:
            run.student = stages.distill(run)
        if "evaluate" in listed:
            run.report = stages.evaluate(run)
        if "export" in listed:
            stages.export(run)
        run.accelerator.wait_for_everyone()
    finally:
        end_training(run.accelerator)
    return run
