"""The stages of a run, in their order: data, prepare, teacher, cache, distill, evaluate, export.

Each takes the `Run` (`distill.context`), reads what it needs there and in the run folder, writes its
files there, and returns what it made for the stages after it; `distill.pipeline.run_recipe` calls them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import fields, is_dataclass
from functools import partial
from pathlib import Path

from accelerate.utils import set_seed
from torch import nn

from distill.context import Run, build_student, flat_config, run_views
from distill.core.config import recipe_to_dict
from distill.core.schema import LossConfig, embedding_term
from distill.core.scorers import scorer_for
from distill.data.synthetic import generate_synthetic
from distill.data.video import CLIP_MEAN, CLIP_STD
from distill.evaluation.card import write_model_card
from distill.evaluation.evaluate import evaluate as evaluate_models
from distill.evaluation.evaluate import model_metrics, write_reports
from distill.prepare import write_frames
from distill.training.augment import random_crops
from distill.training.cache import CacheError, TeacherCache, build_cache, cache_key, dataset_key
from distill.training.losses import DistillationLoss
from distill.training.schedule import read_summaries
from distill.training.train import OnlineTeacher, TeacherEnsemble, train
from students import Student, export_student, load_student, round_weights
from teachers import CLIP4Clip, load_teacher, save_teacher
from teachers.archs import teacher_arch


def make_data(run: Run) -> None:
    """data: generates the synthetic dataset in `data.root` (reused when it is there); other formats are
    read where they are."""
    if run.recipe.data.format == "synthetic" and run.accelerator.is_main_process:
        generate_synthetic(run.recipe.data.root, run.recipe.data.synthetic)
    run.accelerator.wait_for_everyone()


def prepare(run: Run) -> None:
    """prepare: decodes every video of both splits once into frame shards (as `python -m distill.prepare`),
    on the main process; the datasets opened after it read them."""
    if run.accelerator.is_main_process:
        shards, folder = write_frames(run.recipe, run_views(run.recipe, run.teacher))
        print(
            f"prepare: {len(shards)} videos as {shards.encoding} frames in {folder}"
            + (f"; {len(shards.failed)} could not be decoded" if shards.failed else "")
        )
    run.accelerator.wait_for_everyone()


def validation(run: Run, trained: str) -> Callable[[nn.Module], dict[str, float]] | None:
    """What `train` logs each epoch for the model of the `trained` view: its R@1 on (the first `eval.val_pairs`
    pairs of) the validation split, and the frozen teacher's (computed once) when the student trains. None
    without a validation split: the test split is never looked at before the final report."""
    r = run.recipe
    if not r.eval.val_pairs or "val" not in run.data:
        return None
    subset = run.data["val"].subset(r.eval.val_pairs)
    frozen: dict[str, float] = {}

    def r1(model: nn.Module, view: str) -> dict[str, float]:
        metrics = model_metrics(
            {view: model},
            subset,
            batch_size=r.eval.batch_size,
            accelerator=run.accelerator,
            num_workers=r.data.num_workers,
        )[view]
        return {f"val_{view}_{direction}_R1": metrics[direction]["R1"] for direction in ("t2v", "v2t")}

    def validate(model: nn.Module) -> dict[str, float]:
        if trained == "student" and not frozen:
            frozen.update(r1(run.teacher, "teacher"))
        return {**frozen, **r1(model, trained)}

    return validate


# Recipe keys that may change between a killed run and its resume: how often it checkpoints and logs, the
# micro-batches of a step (the same losses over the whole batch), and how the frozen teacher is run and
# cached after its stage (the distill stage keeps the teachers themselves, `teacher_key`).
RESUMABLE = {f"{t}.{k}" for t in ("train", "teacher.train") for k in ("resume", "checkpoint_every", "log_every")}
RESUMABLE |= {"train.accumulate", "teacher.train.accumulate"}
RESUMABLE |= {f"teacher.{k}" for k in ("source", "ensemble", "precision", "cache", "cache_videos_per_shard")}
# Start weights: a resume loads its own weights over them, so whether one is set counts (it makes the
# coef_lr parameter group), not where its file is now.
STARTS = {"teacher.init", "student.pretrained", "student.init"}


def checkpoint_settings(run: Run, sections: tuple[str, ...], teachers: Sequence[nn.Module] = ()) -> dict:
    """What a training stage's checkpoints must be resumed with (`distill.training.checkpoints`): the seed, the mixed
    precision, the recipe `sections` that shape its model and optimisation (a dict or list field such as
    backbone_kwargs as one value, so an entry added or dropped differs), its train pairs and their
    sampling, and the frozen `teachers` it learns from, by their weights."""
    r, settings = run.recipe, {}

    def add(config, prefix: str) -> None:
        for field in fields(config):
            key, value = f"{prefix}{field.name}", getattr(config, field.name)
            if is_dataclass(value):
                add(value, f"{key}.")
            elif key in STARTS:
                settings[key] = value is not None
            elif key not in RESUMABLE:
                settings[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else value

    for name in sections:
        add(getattr(r, name), f"{name}.")
    data = {"dataset": dataset_key(run.data["train"]), "sampling": train_sampling(run)}
    settings |= flat_config({"seed": r.seed, "mixed_precision": r.mixed_precision, "data": data})
    if teachers:  # their count (one added or dropped) and each by member, so a refusal names the one that moved
        members = {str(i): run.teacher_key(t) for i, t in enumerate(teachers)}
        settings |= flat_config({"teachers": {"count": len(teachers), **members}})
    return settings


def train_teacher(run: Run) -> CLIP4Clip:
    """teacher: a given `teacher.source` as it is; without one, a CLIP4Clip trained on the train pairs
    (contrastive loss only) from `teacher.init` or from random weights, saved as `teacher.safetensors` and
    loaded back frozen."""
    r = run.recipe
    if r.teacher.source is not None:
        return run.teacher
    set_seed(r.seed)
    if r.teacher.init is not None:  # loaded frozen when the run started (its input size is the teacher view's)
        model = run.teacher.trainable()
        model.precision, model.fine_tuning = None, True
    else:
        model = CLIP4Clip(teacher_arch(r.teacher, r.data.max_words))
    loss = DistillationLoss(LossConfig(contrastive_weight=1.0), student_dim=0, teacher_dim=0)
    crops = None
    if r.teacher.crop_scale < 1:
        crops = partial(random_crops, view="teacher", scale=r.teacher.crop_scale, seed=r.seed)
    model = train(
        model,
        loss,
        run.data["train"],
        r.teacher.train,
        accelerator=run.accelerator,
        view="teacher",
        seed=r.seed,
        run_dir=run.dir,
        name="teacher",
        num_workers=r.data.num_workers,
        validate=validation(run, "teacher"),
        augment=crops,
        settings=checkpoint_settings(run, ("teacher",)),
    )
    path = run.dir / "teacher.safetensors"
    if run.accelerator.is_main_process:
        save_teacher(model, path, recipe=json.dumps(recipe_to_dict(r)))
    run.accelerator.wait_for_everyone()
    run.accelerator.print(f"teacher: trained and saved to {path}")
    return load_teacher(path, device=run.accelerator.device, precision=r.teacher.precision)


def teacher_caches(run: Run) -> list[tuple[CLIP4Clip, Path]]:
    """Every teacher of the run (the first, then `teacher.ensemble`) with the folder of its cache."""
    members = [run.teacher, *run.ensemble]
    return [(m, run.dir / ("teacher_cache" if i == 0 else f"teacher_cache_{i}")) for i, m in enumerate(members)]


def train_sampling(run: Run) -> dict:
    """How the teacher's view of a train clip and its tokens are made (the dataset takes both views from one
    decode of max(teacher, student) frames)."""
    r, train_pairs = run.recipe, run.data["train"]
    return {
        "max_frames": train_pairs.views["teacher"].max_frames,
        "image_size": train_pairs.views["teacher"].size,
        "decode_frames": train_pairs.decode_frames,
        "framerate": r.data.framerate,
        "slice_framepos": r.data.slice_framepos,
        "max_words": r.data.max_words,
        "backend": r.data.backend,
        # raw frame shards hold the decoded frames exactly, JPEG ones within JPEG error
        "frames": "raw" if train_pairs.shards is None else train_pairs.shards.encoding,
    }


def run_cache_key(run: Run, teacher: CLIP4Clip) -> dict:
    """What the cache of `teacher` in this run must have been made from: the train pairs, their sampling
    and the teacher."""
    return cache_key(run.data["train"], run.teacher_key(teacher), train_sampling(run))


def cache_teacher(run: Run) -> None:
    """cache: each frozen teacher's outputs for every train pair, in `teacher_cache/` (`teacher_cache_<i>/`
    for `teacher.ensemble[i - 1]`; finished if a kill left it half-written, replaced if it was made for other
    data, sampling or teacher)."""
    r = run.recipe
    for teacher, folder in teacher_caches(run):
        written = build_cache(
            folder,
            teacher,
            run.data["train"].select_views(["teacher"]),
            run_cache_key(run, teacher),
            accelerator=run.accelerator,
            batch_size=r.eval.batch_size,
            videos_per_shard=r.teacher.cache_videos_per_shard,
            num_workers=r.data.num_workers,
        )
        run.accelerator.print(
            f"cache: teacher outputs for {len(run.data['train'])} train pairs in {folder} "
            f"(shards computed now: {written})"
        )


def teacher_outputs(run: Run) -> tuple[OnlineTeacher | TeacherCache | TeacherEnsemble, tuple[str, ...]]:
    """Where distillation gets each teacher's outputs (its cache when `teacher.cache` is true and it is
    there, else the teacher online), and which views of the clips it then needs."""
    members, online = [], False
    for teacher, folder in teacher_caches(run):
        if run.recipe.teacher.cache and (folder / "manifest.json").is_file():
            try:
                members.append(
                    TeacherCache(folder, run_cache_key(run, teacher), teacher, device=run.accelerator.device)
                )
            except CacheError as error:
                raise CacheError(f"distill: {error}") from None
            run.accelerator.print(f"distill: teacher outputs from {folder}")
        else:
            members.append(OnlineTeacher(teacher))
            online = True
    views = ("teacher", "student") if online else ("student",)
    return (members[0] if len(members) == 1 else TeacherEnsemble(members)), views


def distill(run: Run) -> Student:
    """distill: the student trained on the recipe's losses against the frozen teacher, rounded to
    `export.dtype` (what ships is what the evaluate stage measures)."""
    r = run.recipe
    if scorer_for(run.teacher).pairwise and (term := embedding_term(r.loss)):
        raise ValueError(f"loss.{term}: a tightTransf teacher has no embeddings to match; set it to 0")
    if r.loss.teacher_logit_scale and any(scorer_for(m).pairwise for m in run.ensemble):
        raise ValueError("loss.teacher_logit_scale: a tightTransf teacher in teacher.ensemble has no cosines to scale")
    teacher, views = teacher_outputs(run)
    set_seed(r.seed)
    student = build_student(r, run.teacher)
    loss = DistillationLoss(r.loss, student_dim=r.student.embed_dim, teacher_dim=run.teacher.embed_dim)
    student = train(
        student,
        loss,
        run.data["train"].select_views(views),
        r.train,
        accelerator=run.accelerator,
        view="student",
        seed=r.seed,
        run_dir=run.dir,
        name="distill",
        teacher=teacher,
        num_workers=r.data.num_workers,
        validate=validation(run, "student"),
        settings=checkpoint_settings(run, ("student", "loss", "train"), [run.teacher, *run.ensemble]),
    )
    round_weights(student, r.export.dtype)
    run.accelerator.print("distill: student trained")
    return student


def evaluate(run: Run) -> dict:
    """evaluate: Recall@K, ranks and cost of teacher and student on the test split, and the schedule of the
    training stages (best epoch, why they stopped), in `report.json` and `report.md`; a run without the
    distill stage evaluates the student its folder holds."""
    student = run.student or load_student(run.dir / "student.safetensors", device=run.accelerator.device)
    r = run.recipe
    report = evaluate_models(
        {"teacher": run.teacher, "student": student},
        run.data["test"],
        batch_size=r.eval.batch_size,
        accelerator=run.accelerator,
        num_workers=r.data.num_workers,
    )
    report = {"name": r.name, **report}
    if r.eval.val_pairs and "val" in run.data:  # the gallery the per-epoch validation R@1 was measured on
        val = run.data["val"].subset(r.eval.val_pairs)
        report["validation"] = {"pairs": len(val), "videos": len(set(val.video_ids))}
    if schedules := read_summaries(run.dir):  # how long each stage trained, and which epoch it kept
        report["schedule"] = schedules
    if run.accelerator.is_main_process:
        write_reports(report, run.dir)
    t, s = report["teacher"]["t2v"]["R1"], report["student"]["t2v"]["R1"]
    run.accelerator.print(
        f"evaluate: text-to-video R@1 teacher {t:.1f}, student {s:.1f} "
        f"({100 * s / max(t, 1e-9):.1f}% of the teacher); {run.dir / 'report.md'}"
    )
    return report


def export(run: Run) -> None:
    """export: `student.safetensors`, its metadata holding the recipe, the preprocessing and the metrics, and
    the model card folder `student/` (the same weights, config.json, README.md) to upload as it is."""
    if run.student is None:
        raise ValueError("export: no student trained in this run; add the 'distill' stage")
    r = run.recipe
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        preprocessing = {
            "max_frames": r.student.max_frames,
            "image_size": r.student.image_size,
            "mean": CLIP_MEAN,
            "std": CLIP_STD,
            "max_words": r.data.max_words,
            "framerate": r.data.framerate,
            "slice_framepos": r.data.slice_framepos,
        }
        metadata = {"recipe": json.dumps(recipe_to_dict(r)), "preprocessing": json.dumps(preprocessing)}
        if r.student.text == "teacher":  # its videos land in the space of the teacher's text tower it ships
            metadata["embedding_space"] = f"teacher:{run.teacher_key(run.teacher)['sha256']}"
        if run.report is not None:
            metadata["metrics"] = json.dumps(run.report["student"])
        path = export_student(run.student, run.dir / "student.safetensors", metadata, dtype=r.export.dtype)
        card = write_model_card(
            path,
            run.dir / "student",
            name=f"{r.name}-student",
            dataset=r.data.format,
            spec=run.student.spec(),
            preprocessing=preprocessing,
            report=run.report,
        )
        run.accelerator.print(f"export: student saved to {path}, with a model card folder {card}")
