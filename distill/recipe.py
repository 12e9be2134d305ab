"""Reading a recipe: `load_recipe` reads a YAML file strictly into the schema (`distill.core.schema`, through
`distill.core.config`), applies `dotted.key=value` overrides and checks what only the whole recipe can tell
(files that must exist, stage combinations, models that can be built).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from operator import attrgetter
from pathlib import Path

from distill.core.commands import add_recipe_arguments
from distill.core.config import RecipeError, load_dataclass
from distill.core.schema import NON_NEGATIVE, POSITIVE, STAGE_ORDER, Recipe, embedding_term
from distill.data.formats import check_data_files


def load_recipe(path: str | Path, overrides: Sequence[str] = (), *, data_only: bool = False) -> Recipe:
    """Reads, overrides and checks a recipe; every problem is a `RecipeError` naming the key or file.

    `data_only` leaves out the checks of what only training reads (teacher.source, student.pretrained, the
    stages' needs), for `python -m distill.prepare --check`, which reads only the data.
    """
    recipe = load_dataclass(Recipe, path, overrides)
    order = [STAGE_ORDER.index(s) for s in recipe.stages]
    if not order or order != sorted(set(order)):
        raise RecipeError(
            f"stages: {recipe.stages} must be a non-empty list of distinct stages in the order {list(STAGE_ORDER)}"
        )
    for key in POSITIVE + NON_NEGATIVE:
        value = attrgetter(key)(recipe)
        if value < 0 or (value == 0 and key in POSITIVE):
            raise RecipeError(f"{key}: must be {'positive' if key in POSITIVE else 'zero or more'}, got {value}")
    if not 0 < recipe.teacher.crop_scale <= 1:
        raise RecipeError(f"teacher.crop_scale: must be in (0, 1], got {recipe.teacher.crop_scale}")
    if recipe.teacher.crop_scale < 1 and recipe.teacher.source is not None:
        raise RecipeError("teacher.crop_scale: crops are for a teacher trained here; teacher.source is given as it is")
    if not 0 <= recipe.data.val_fraction < 1:
        raise RecipeError(f"data.val_fraction: must be at least 0 and below 1, got {recipe.data.val_fraction}")
    for key, train in (("train", recipe.train), ("teacher.train", recipe.teacher.train)):
        if train.patience and not (recipe.data.val_fraction and recipe.eval.val_pairs):
            raise RecipeError(
                f"{key}.patience: the stopping rule reads the validation split, which this recipe turns off "
                f"(data.val_fraction {recipe.data.val_fraction}, eval.val_pairs {recipe.eval.val_pairs}); "
                f"set both above 0, or {key}.patience to 0"
            )
    check_data_files(recipe.data)
    if (
        recipe.data.format == "synthetic"
        and "data" not in recipe.stages
        and not (Path(recipe.data.root) / "manifest.json").is_file()
    ):
        raise RecipeError(f"data.root: no synthetic dataset in {recipe.data.root}; add the 'data' stage to make it")
    if data_only:
        return recipe
    source = recipe.teacher.source
    if source is not None and recipe.teacher.init is not None:
        raise RecipeError(
            "teacher.init and teacher.source are both set: init is fine-tuned by the teacher stage, source is used "
            "as it is; set one"
        )
    if recipe.teacher.init is not None and "teacher" not in recipe.stages:
        raise RecipeError("teacher.init: the 'teacher' stage fine-tunes it; add that stage, or use teacher.source")
    for key, given in (("teacher.source", source), ("teacher.init", recipe.teacher.init)):
        check_teacher_file(key, given)
    for i, member in enumerate(recipe.teacher.ensemble):
        if not member.startswith("open_clip:") and not Path(member).is_file():
            raise RecipeError(f"teacher.ensemble[{i}]: no such file: {member}")
    if recipe.student.pretrained is not None and not Path(recipe.student.pretrained).is_file():
        raise RecipeError(f"student.pretrained: no such weights file: {recipe.student.pretrained}")
    if recipe.student.init is not None:
        check_student_init(recipe)
    if recipe.student.text == "teacher" and recipe.student.token_rank:
        raise RecipeError("student.token_rank: student.text=teacher keeps the teacher's token embedding; set it to 0")
    if recipe.student.text == "inherit" and source is None and recipe.teacher.init is None:
        check_inheritance_here(recipe)
    if "distill" in recipe.stages:
        from students import check_student  # timm, only for recipes that train a student

        try:
            check_student(recipe.student, recipe.data.max_words)
        except ValueError as error:
            raise RecipeError(str(error)) from None
    if source is None and "teacher" not in recipe.stages and {"cache", "distill", "evaluate"} & set(recipe.stages):
        raise RecipeError("teacher.source: required when the stages do not include 'teacher'")
    if "cache" in recipe.stages and not recipe.teacher.cache:
        raise RecipeError("teacher.cache: false, but the stages include 'cache'; drop one of them")
    if (
        source is None
        and recipe.teacher.init is None
        and recipe.teacher.sim_header == "tightTransf"
        and "distill" in recipe.stages
        and (term := embedding_term(recipe.loss))
    ):
        raise RecipeError(f"loss.{term}: a tightTransf teacher has no embeddings to match; set it to 0")
    return recipe


def check_inheritance_here(recipe: Recipe) -> None:
    """`student.text=inherit` fits the text tower of the teacher the teacher stage trains (a given teacher is
    checked by `start_run`, once it is loaded, before any stage)."""
    from students.model import TextTower, check_inheritance  # torch and open_clip, only for recipes that need them
    from teachers.archs import teacher_arch

    text = teacher_arch(recipe.teacher, recipe.data.max_words)["text_cfg"]
    try:
        check_inheritance(recipe.student, TextTower(text["width"], text["heads"], text["layers"], quick_gelu=True))
    except ValueError as error:
        raise RecipeError(str(error)) from None


def check_student_init(recipe: Recipe) -> None:
    """`student.init` names a student export whose architecture is the recipe's student's (read from its
    header, before any stage runs)."""
    from students import export_file, read_metadata  # safetensors and timm, only for recipes that need them

    path = export_file(recipe.student.init)
    if not path.is_file():
        raise RecipeError(f"student.init: no such student export: {recipe.student.init}")
    try:
        found = json.loads(read_metadata(path)["config"])
    except (ValueError, KeyError) as error:
        raise RecipeError(f"student.init: {error}") from None
    wanted = {**asdict(recipe.student), "max_words": recipe.data.max_words}
    differ = [
        f"{key}={found[key]!r} (the recipe: {value!r})"
        for key, value in wanted.items()
        if key not in ("pretrained", "init") and key in found and found[key] != value
    ]
    if differ:
        raise RecipeError(f"student.init: {path} is another student: {', '.join(differ)}")


def check_teacher_file(key: str, source: str | None) -> None:
    """A teacher file (or open_clip source's weights file) that is not there, named by its recipe `key`."""
    if source is not None and source.startswith("open_clip:"):
        from teachers import parse_open_clip_source  # torch and open_clip, only for recipes that need them

        try:
            _, weights = parse_open_clip_source(source)
        except ValueError as error:
            raise RecipeError(f"{key}: {error}") from None
        if not weights.is_file():
            raise RecipeError(f"{key}: no such weights file: {weights} (the pretrained= file of {source})")
    elif source is not None and not Path(source).is_file():
        raise RecipeError(f"{key}: no such file: {source}")


def parse_recipe_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, Recipe | None]:
    """Adds the `RECIPE.yaml [dotted.key=value ...]` arguments, parses `argv` and loads the recipe; on a
    `RecipeError` prints it and gives `None`, for the caller to exit with 2 before any work."""
    add_recipe_arguments(parser)
    args = parser.parse_intermixed_args(argv)  # flags anywhere: RECIPE --dry-run key=value
    try:  # a --check (distill.prepare) reads only the data
        return args, load_recipe(args.recipe, args.overrides, data_only=getattr(args, "check", False))
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return args, None
