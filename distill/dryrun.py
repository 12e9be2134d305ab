"""Know before you run: `python distill/run.py RECIPE --dry-run [dotted.key=value ...]`.

Everything a run checks before its first stage, and what the run would find and cost, without training,
caching or writing anything: the resolved recipe, the stages, the pairs and videos found after opening every
video, both models (built as the run builds them, pretrained files loaded) with their cost table, and the disk
the frame shards and the teacher cache will take, estimated from a few clips of the dataset encoded as the
run stores them and from one output of the teacher.
"""

from __future__ import annotations

import sys

import torch
import yaml

from distill.context import build_student, check_frames, given_teacher, random_start, run_views
from distill.core.config import recipe_to_dict
from distill.core.schema import Recipe
from distill.core.scorers import scorer_for
from distill.data.checks import check_videos, describe, read_split_or_stop
from distill.data.dataset import frame_settings, frames_folder
from distill.data.shards import RAW_UP_TO, encode_clip
from distill.data.splits import hold_out
from distill.evaluation.evaluate import cost_table, model_cost
from students import check_inheritance, teacher_text_sizes
from students.model import Preprocessing
from teachers import CLIP4Clip, tokenize
from teachers.archs import teacher_arch

STAGES = {  # what each stage does, for the plan a dry run prints
    "data": "generate the synthetic dataset",
    "prepare": "decode every video once into frame shards",
    "teacher": "train the teacher from random weights",
    "cache": "run the frozen teacher once over the train pairs, to disk",
    "distill": "train the student",
    "evaluate": "teacher and student on the test split: report.md, report.json",
    "export": "write student.safetensors and its model card",
}
SAMPLE_VIDEOS = 3  # clips encoded to estimate the frame shards' size


def dry_run(recipe: Recipe) -> int:
    """Prints the plan, the data, the models' costs and the disk; returns 2 where a model cannot be built or a
    file does not fit (naming the key and file), 1 where the data have problems, else 0."""
    print("# Resolved recipe\n")
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False))
    print("# Stages\n")
    for number, stage in enumerate(recipe.stages, start=1):
        print(f"{number}. {stage}: {plan(recipe, stage)}")
    if warning := random_start(recipe):
        print(f"\nwarning: {warning}")
    try:
        teacher, student = models(recipe)
    except (ValueError, FileNotFoundError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("\n# Data\n")
    found, problems = data(recipe)
    print("\n# Cost (random inputs; per video and per caption)\n")
    efficiency = {
        name: model_cost(model, *sample(model)) for name, model in (("teacher", teacher), ("student", student))
    }
    print("\n".join(cost_table({"efficiency": efficiency}, ["teacher", "student"])))
    print("\n# Disk\n")
    for line in disk(recipe, teacher, found):
        print(line)
    print(f"\ndry run: nothing was trained or written; {problems} data problems")
    return 1 if problems else 0


def plan(recipe: Recipe, stage: str) -> str:
    """What `stage` will do in this recipe."""
    if stage == "data" and recipe.data.format != "synthetic":
        return f"nothing to make: the {recipe.data.format} dataset is read where it is"
    if stage == "teacher" and recipe.teacher.source is not None:
        return f"nothing to train: teacher.source ({recipe.teacher.source}) is used as it is"
    if stage == "teacher" and recipe.teacher.init is not None:
        return f"fine-tune teacher.init ({recipe.teacher.init}) on the train pairs"
    return STAGES[stage]


def megabytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def models(recipe: Recipe) -> tuple[CLIP4Clip, torch.nn.Module]:
    """The teacher (the given one, loaded; or the architecture the teacher stage trains, random) and the student
    as the distill stage builds it, each held to the recipe as `start_run` holds them.

    Raises:
        ValueError, FileNotFoundError, RuntimeError: naming the key and file that cannot be built or loaded.
    """
    teacher = given_teacher(recipe)
    if teacher is None:
        teacher = CLIP4Clip(teacher_arch(recipe.teacher, recipe.data.max_words))
    elif recipe.teacher.source is not None:
        check_frames("teacher.source", recipe.teacher.source, recipe.teacher.max_frames)
    teacher.eval().requires_grad_(False)
    if recipe.student.text == "inherit":
        check_inheritance(recipe.student, teacher_text_sizes(teacher, recipe.data.max_words))
    student = build_student(recipe, teacher).eval()
    views = run_views(recipe, teacher)
    for name, model in (("teacher", teacher), ("student", student)):
        model.preprocessing = Preprocessing(
            views[name].max_frames, views[name].size, recipe.data.max_words, recipe.data.framerate
        )
    return teacher, student


def sample(model: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """One random clip and one caption as `model` reads them."""
    p = model.preprocessing
    ids, mask = tokenize(["a person is cooking pasta in a small kitchen"], p.max_words)
    video = torch.randn(1, p.max_frames, 3, p.image_size, p.image_size)
    return video, torch.ones(1, p.max_frames, dtype=torch.long), ids, mask


def data(recipe: Recipe) -> tuple[dict[str, list], int]:
    """Prints the pairs and videos of each split usable after opening every video, and the problems; returns
    the usable pairs by split ("train", "val", "test") and the number of problems."""
    if recipe.data.format == "synthetic" and "data" in recipe.stages:
        s = recipe.data.synthetic
        print(
            f"synthetic: the data stage generates {s.num_train} train and {s.num_test} test clips in {recipe.data.root}"
        )
        return {}, 0
    found, total = {}, 0
    for split in ("train", "test"):
        annotated = read_split_or_stop(recipe.data, split)
        pairs, bad = check_videos(annotated.pairs, backend=recipe.data.backend)
        problems = annotated.problems + bad
        total += len(problems)
        if split == "train":
            found["train"], found["val"] = hold_out(pairs, recipe.data.val_fraction)
        else:
            found["test"] = pairs
        print(
            f"{split}: {len(pairs)} pairs of {len({p.video for p in pairs})} videos usable, {len(problems)} problems"
            + (":" if problems else "")
        )
        for line in describe(problems, limit=10):
            print(line)
    val = found["val"]
    print(
        f"validation: {len(val)} pairs of {len({p.video for p in val})} videos held out of train "
        f"(data.val_fraction={recipe.data.val_fraction})"
    )
    return found, total


def disk(recipe: Recipe, teacher: CLIP4Clip, found: dict[str, list]) -> list[str]:
    """Lines estimating the frame shards (from up to SAMPLE_VIDEOS clips encoded as prepare stores them) and the
    teacher cache (from the teacher's scorer outputs for one clip and one caption)."""
    lines = []
    views = run_views(recipe, teacher)
    videos = sorted({p.video for pairs in found.values() for p in pairs})
    if "prepare" in recipe.stages and videos:
        settings = frame_settings(recipe.data, views)
        encoding = recipe.data.prepared_encoding
        if encoding == "auto":
            encoding = "raw" if max(settings["sizes"]) <= RAW_UP_TO else "jpeg"
        encoded = [encode_clip(video, settings, encoding) for video in videos[:SAMPLE_VIDEOS]]
        sizes = [len(got[0]) for got in encoded if not isinstance(got, str)]  # a str: why it failed
        if sizes:
            per_video = sum(sizes) / len(sizes)
            folder = frames_folder(recipe.data, recipe.run_dir)
            lines.append(
                f"frame shards ({folder}): about {megabytes(per_video * len(videos))}: "
                f"{per_video / 1e3:.0f} KB a clip ({encoding}, {settings['max_frames']} frames at most, sizes "
                f"{settings['sizes']}, the mean of {len(sizes)} clips) x {len(videos)} videos"
            )
    train = found.get("train", [])
    if "cache" in recipe.stages and train and recipe.teacher.cache:
        scorer = scorer_for(teacher)
        video, mask, ids, ids_mask = sample(teacher)
        with torch.no_grad():
            per_video = sum(t.nbytes for t in scorer.videos(teacher.frame_features(video), mask).values())
            per_caption = sum(t.nbytes for t in scorer.texts(ids, ids_mask).values())
        n_videos = len({p.video for p in train})
        total = per_video * n_videos + per_caption * len(train)
        lines.append(
            f"teacher cache ({recipe.run_dir / 'teacher_cache'}): about {megabytes(total)}: {per_video} bytes a "
            f"video x {n_videos} + {per_caption} bytes a caption x {len(train)}"
        )
    if not lines:
        lines.append("nothing estimated: no prepare or cache stage, or no videos found")
    return lines
