"""What a run is built from before and between its stages: the `Run` the stages pass along, the
Accelerator and run folder (`start_run`), a given teacher, the views, the datasets and the student."""

from __future__ import annotations

import json
import sys
import weakref
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    ProjectConfiguration,
    is_tensorboard_available,
    is_wandb_available,
)

from distill.core.config import recipe_to_dict, save_recipe
from distill.core.schema import Recipe
from distill.data.checks import check_videos, describe, read_split_or_stop, write_bad_videos
from distill.data.dataset import VideoTextDataset, View, frame_settings, frames_folder, recipe_views
from distill.data.shards import open_shards
from distill.data.splits import check_disjoint, hold_out
from distill.training.cache import teacher_key
from distill.training.train import check_split
from students import (
    Student,
    check_inheritance,
    export_file,
    inherited_text_tower,
    load_student,
    read_metadata,
    teacher_text_sizes,
    teacher_text_tower,
)
from students.model import TextTower
from teachers import CLIP4Clip, load_teacher
from teachers.export import teacher_sha256, training_recipe

TRACKERS = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}  # name -> is it installed


@dataclass
class Run:
    """A run of a recipe and what its stages made so far; each stage reads it and fills what it makes."""

    recipe: Recipe
    accelerator: Accelerator
    teacher: CLIP4Clip | None = None  # teacher.source, loaded when the run starts, or the teacher stage's
    # "train", "val" (when data.val_fraction holds some out), "test": every view of each clip
    data: dict[str, VideoTextDataset] = field(default_factory=dict)
    ensemble: list[CLIP4Clip] = field(default_factory=list)  # teacher.ensemble, loaded when the run starts
    student: Student | None = None  # the distill stage's (the evaluate stage loads an earlier run's)
    report: dict | None = None  # the evaluate stage's
    # teacher_key's: each teacher's weights hash and the (storage, version) of every tensor it was taken at
    weight_hashes: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, repr=False)

    @property
    def dir(self) -> Path:
        return self.recipe.run_dir

    def teacher_key(self, teacher: CLIP4Clip) -> dict:
        """`distill.training.cache.teacher_key` of one of this run's teachers (the cache stage, distillation's cache
        check, its checkpoint settings and the export all name it: about 1 s of hashing each for ViT-B/32).
        A frozen teacher's weights are hashed again only when a tensor was written or moved since: in-place
        writes through autograd's view of a tensor (`load_state_dict`, torch's default optimizer steps) bump
        its version, `.to()` gives it new storage. Writes that bypass the version counter (`p.data.add_()`,
        fused optimizer steps, inference tensors) are not seen, which is why a teacher with a trainable
        parameter, the one such steps would train, is hashed every time; none of this code writes a frozen
        teacher so."""
        stamp = tuple((t.data_ptr(), t._version) for t in teacher.state_dict().values())
        found = self.weight_hashes.get(teacher)
        if found is None or found[0] != stamp or any(p.requires_grad for p in teacher.parameters()):
            found = self.weight_hashes[teacher] = (stamp, teacher_sha256(teacher))
        return teacher_key(teacher, found[1])


def given_teacher(recipe: Recipe, device="cpu") -> CLIP4Clip | None:
    """`teacher.source` (or `teacher.init`, which the teacher stage then fine-tunes) loaded, or None where the
    teacher stage trains one from random weights. Loaded before anything else: its input size is the teacher
    view's."""
    source = recipe.teacher.source or recipe.teacher.init
    return None if source is None else load_teacher(source, device=device, precision=recipe.teacher.precision)


def check_frames(key: str, source: str, frames: int) -> None:
    """Stops a run that would give a teacher trained here another number of frames a clip than it learnt on:
    a seqTransf teacher trained on 4 and given 8 fell from 17.9 to 3.3 t2v R@1 (BENCHMARKS.md, "A teacher
    from random weights that learns scenes"). Every head is held to it, meanP too: the recipe that trained
    a teacher is the one way this toolkit knows how it reads clips. Other sources are not checked."""
    recipe = training_recipe(source)
    trained = None if recipe is None else recipe["teacher"]["max_frames"]
    if trained is not None and trained != frames:
        raise ValueError(
            f"{key}: {source} was trained on {trained} frames a clip and this run gives it {frames}; "
            f"set teacher.max_frames={trained}"
        )


def run_views(recipe: Recipe, teacher: CLIP4Clip | None) -> dict[str, View]:
    """The teacher and student views of every clip; a given teacher brings its own input size."""
    return recipe_views(recipe, None if teacher is None else teacher.input_size)


def check_inherited_init(init: str, sizes: TextTower) -> None:
    """`student.init` with `student.text=inherit`: the export's inherited text tower must be of this teacher's
    `sizes`, its activation too (a GELU tower, an open_clip teacher's, has QuickGELU's shapes: its weights would
    load and run under the other activation). Reads the export's header only."""
    path = export_file(init)
    found, wanted = json.loads(read_metadata(path)["config"]).get("teacher_text") or {}, asdict(sizes)
    if differ := [
        f"{key}={found.get(key)!r} (this teacher's: {value!r})"
        for key, value in wanted.items()
        if found.get(key) != value
    ]:
        raise ValueError(
            f"student.init: {path} inherited a text tower with {', '.join(differ)}: start from a student "
            "distilled from this teacher, or without student.init"
        )


def build_student(recipe: Recipe, teacher: CLIP4Clip) -> Student:
    """The student of the recipe, with the teacher's text tower (frozen, its weights loaded) when
    `student.text=teacher`, or a tower inherited from it (`inherit`: trained from the teacher's weights)."""
    s, sizes, text_weights = recipe.student, None, None
    if s.text == "teacher":
        if s.embed_dim != teacher.embed_dim:
            raise ValueError(
                f"student.embed_dim: {s.embed_dim}, but student.text=teacher embeds captions with the teacher's "
                f"{teacher.embed_dim}-d text tower; set student.embed_dim={teacher.embed_dim}"
            )
        sizes, text_weights = teacher_text_tower(teacher, recipe.data.max_words)
    elif s.text == "inherit":  # its sizes; with student.init, the export's trained weights replace these
        sizes, text_weights = inherited_text_tower(teacher, s, recipe.data.max_words)
    student = Student(s, max_words=recipe.data.max_words, teacher_text=sizes)
    if s.text == "inherit":  # a projection not inherited: the student's own stays
        text_weights = {**student.text.state_dict(), **text_weights}
    if text_weights is not None:  # strict: the teacher's tower gives every weight, an inherited one none unknown
        student.text.load_state_dict(text_weights)
    if s.init is not None:  # the same architecture (recipe.check_student_init); strict on every key
        if s.text == "inherit":
            check_inherited_init(s.init, sizes)
        weights = load_student(s.init).state_dict()
        if s.text == "teacher":  # the text tower stays this teacher's, whatever the export's was
            weights.update({f"text.{k}": v for k, v in student.text.state_dict().items()})
        try:
            student.load_state_dict(weights)
        except RuntimeError as error:
            raise ValueError(f"student.init: {s.init} is not the student the recipe describes: {error}") from None
    if not (recipe.loss.kl_weight or recipe.loss.contrastive_weight):
        # No term reads the logit scale, and DDP refuses a parameter that gets no gradient.
        student.logit_scale_log.requires_grad_(False)
    return student


FULL_SIZE = 224  # frames this wide or wider: CLIP4Clip's, where a frame encoder from random weights learns little


def random_start(recipe: Recipe) -> str | None:
    """The warning for a full-size student about to be distilled from random weights, naming the keys that give
    it weights (CLIP-KD and MobileViCLIP start every student from pretrained towers; one trained from scratch on a
    dataset of thousands of videos learns little); None for a student that starts from weights, or is small."""
    s = recipe.student
    if "distill" not in recipe.stages or s.init is not None or s.pretrained is not None or s.image_size < FULL_SIZE:
        return None
    what = (
        "an open_clip model's weights file"
        if s.backbone.startswith("open_clip:")
        else "ImageNet weights in timm's layout"
    )
    text = " and its own text tower" if s.text == "own" else ""
    return (
        f"the student's frame encoder ({s.backbone} at {s.image_size} px){text} starts from random weights: set "
        f"student.pretrained=FILE ({what}) or student.init=EXPORT (a student to start from); trained from scratch "
        "on a dataset of thousands of videos, a full-size student learns little"
    )


def flat_config(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """`{"train.lr": 0.001, "stages": '["data", ...]', ...}`: the scalars trackers take as hyperparameters."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return flat


def start_run(recipe: Recipe) -> Run:
    """The Accelerator (every batch global, split over the processes), the batch sizes checked against the
    process count, the run folder with the resolved recipe, the trackers, and a given teacher."""
    log_with = [name for name in recipe.log_with if TRACKERS[name]()]
    accelerator = Accelerator(
        mixed_precision=recipe.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        log_with=log_with or None,
        project_config=ProjectConfiguration(project_dir=str(recipe.run_dir), logging_dir=str(recipe.run_dir / "logs")),
    )
    processes, train, teacher = accelerator.num_processes, recipe.train, recipe.teacher.train
    check_split("eval.batch_size", recipe.eval.batch_size, processes)
    if "distill" in recipe.stages:
        check_split("train.batch_size", train.batch_size, processes, train.accumulate)
    if "teacher" in recipe.stages and recipe.teacher.source is None:
        check_split("teacher.train.batch_size", teacher.batch_size, processes, teacher.accumulate)
    # The given teachers are loaded and checked against the recipe (input sizes, text=inherit) before the run
    # folder and the trackers, so a bad one leaves nothing behind, and before any stage (the cache stage can
    # take hours on real data).
    teacher = given_teacher(recipe, accelerator.device)
    if recipe.teacher.source is not None:
        check_frames("teacher.source", recipe.teacher.source, recipe.teacher.max_frames)
    if teacher is not None and recipe.student.text == "inherit" and "distill" in recipe.stages:
        sizes = teacher_text_sizes(teacher, recipe.data.max_words)
        check_inheritance(recipe.student, sizes)
        if recipe.student.init is not None:
            check_inherited_init(recipe.student.init, replace(sizes, layers=recipe.student.text_layers))
    size = run_views(recipe, teacher)["teacher"].size
    ensemble = []
    for i, source in enumerate(recipe.teacher.ensemble):
        ensemble.append(load_teacher(source, device=accelerator.device, precision=recipe.teacher.precision))
        check_frames(f"teacher.ensemble[{i}]", source, recipe.teacher.max_frames)
        if ensemble[-1].input_size != size:
            raise ValueError(
                f"teacher.ensemble[{i}]: {source} reads {ensemble[-1].input_size} px frames, the first teacher "
                f"{size} px; the teachers share one view of each clip"
            )
    if warning := random_start(recipe):
        accelerator.print(f"warning: {warning}")
    if accelerator.is_main_process:
        recipe.run_dir.mkdir(parents=True, exist_ok=True)
        save_recipe(recipe, recipe.run_dir / "recipe.yaml")
    accelerator.wait_for_everyone()
    if missing := [name for name in recipe.log_with if name not in log_with]:
        accelerator.print(
            f"log: {', '.join(missing)} not installed (pip install {' '.join(missing)}); "
            "training curves go to the <stage>_log.jsonl files only"
        )
    if log_with:
        accelerator.init_trackers(recipe.name, config=flat_config(recipe_to_dict(recipe)))
    return Run(recipe, accelerator, teacher=teacher, ensemble=ensemble)


def open_datasets(run: Run) -> dict[str, VideoTextDataset]:
    """The train, validation and test pairs with a teacher and a student view of every clip, read from frame
    shards prepared with this run's settings where there are some. The validation pairs are held out of the
    train split (`data.val_fraction`, `distill.data.splits`); a video in two splits stops the run.

    Every video is opened once: the pairs of a video that fails (or of an empty caption) are skipped, logged,
    and the video listed in `bad_videos.txt`; a malformed annotation stops the run.
    """
    r, accelerator = run.recipe, run.accelerator
    views = run_views(r, run.teacher)
    shards, why = open_shards(frames_folder(r.data, run.dir), frame_settings(r.data, views))
    accelerator.print(f"data: {why}")
    found = {split: read_split_or_stop(r.data, split) for split in ("train", "test")}
    train, val = hold_out(found["train"].pairs, r.data.val_fraction)
    splits = {"train": train, "val": val, "test": found["test"].pairs}
    check_disjoint(splits)
    if r.data.val_fraction and not val:
        accelerator.print(f"data: data.val_fraction={r.data.val_fraction} holds out no video; no validation")
    bad_list = run.dir / "bad_videos.txt"
    datasets = {}
    for split, annotated in splits.items():
        if not annotated and split == "val":
            continue
        progress = accelerator.is_local_main_process
        pairs, bad = check_videos(annotated, backend=r.data.backend, shards=shards, progress=progress)
        if accelerator.is_main_process:
            write_bad_videos(bad_list, bad, append=split != "train")  # the train split starts the list
        unread = found[split].problems if split in found else []  # the validation pairs' are the train split's
        if problems := unread + bad:
            skipped = len(unread) + len(annotated) - len(pairs)
            accelerator.print(
                "\n".join(
                    [
                        f"data: {split}: {skipped} pairs skipped, {len(bad)} bad videos (listed in {bad_list}):",
                        *describe(problems, limit=20),
                    ]
                ),
                file=sys.stderr,
            )
        datasets[split] = VideoTextDataset(
            pairs,
            views,
            max_words=r.data.max_words,
            framerate=r.data.framerate,
            slice_framepos=r.data.slice_framepos,
            backend=r.data.backend,
            keep_decoded=r.data.keep_decoded,
            bad_videos=bad_list if split == "train" else None,
            shards=shards,
        )
        accelerator.print(f"data: {len(datasets[split])} {split} pairs")
    return datasets
