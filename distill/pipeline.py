"""The stages of a run, in order: data, prepare, teacher, cache, distill, evaluate, export.

Each stage reads what earlier stages (of this run or an earlier one) left in the run folder or the data
root, and writes its own results there.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    ProjectConfiguration,
    is_tensorboard_available,
    is_wandb_available,
    set_seed,
)
from torch import nn

from distill.cache import CacheError, TeacherCache, build_cache, cache_key
from distill.config import recipe_to_dict, save_recipe
from distill.data.checks import check_videos, describe, write_bad_videos
from distill.data.dataset import VideoTextDataset, View, frame_settings, frames_folder, recipe_views
from distill.data.formats import Annotations, read_split
from distill.data.shards import open_shards, prepare_frames
from distill.data.synthetic import generate_synthetic
from distill.data.video import CLIP_MEAN, CLIP_STD
from distill.evaluate import evaluate, model_metrics, write_reports
from distill.losses import DistillationLoss
from distill.recipe import LossConfig, Recipe, TeacherConfig, embedding_term
from distill.scorers import scorer_for
from distill.train import OnlineTeacher, check_split, end_training, train
from students import Student, export_student, load_student, round_weights, teacher_text_tower
from teachers import CLIP4Clip, load_teacher, save_teacher

TRACKERS = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available}  # name -> is it installed


def teacher_arch(config: TeacherConfig, max_words: int) -> dict:
    """The CLIP4Clip architecture of a teacher trained from scratch by the teacher stage."""
    width = config.text_width
    return {
        "embed_dim": width,  # CLIP4Clip's heads need the embedding width equal to the text width
        "vision_cfg": {
            "image_size": config.image_size,
            "patch_size": config.patch_size,
            "width": config.vision_width,
            "layers": config.vision_layers,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": max_words,
            "vocab_size": 49408,
            "width": width,
            "heads": max(1, width // 64),
            "layers": config.text_layers,
        },
        "sim_header": config.sim_header,
        "cross_layers": config.cross_layers,
    }


def flat_config(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """`{"train.lr": 0.001, "stages": '["data", ...]', ...}`: the scalars trackers take as hyperparameters."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    return flat


class Run:
    """One run of a recipe: the Accelerator, the datasets and the models the stages pass along."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.dir = recipe.run_dir
        log_with = [name for name in recipe.log_with if TRACKERS[name]()]
        self.accelerator = Accelerator(
            mixed_precision=recipe.mixed_precision,
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            log_with=log_with or None,
            project_config=ProjectConfiguration(project_dir=str(self.dir), logging_dir=str(self.dir / "logs")),
        )
        processes = self.accelerator.num_processes
        check_split("eval.batch_size", recipe.eval.batch_size, processes)
        if "distill" in recipe.stages:
            check_split("train.batch_size", recipe.train.batch_size, processes, recipe.train.accumulate)
        if "teacher" in recipe.stages and recipe.teacher.source is None:
            check_split(
                "teacher.train.batch_size", recipe.teacher.train.batch_size, processes, recipe.teacher.train.accumulate
            )
        self.teacher: CLIP4Clip | None = None
        self.student: Student | None = None
        self.report: dict | None = None
        self._datasets: dict[str, VideoTextDataset] = {}
        if self.accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, self.dir / "recipe.yaml")
        self.accelerator.wait_for_everyone()
        if missing := [name for name in recipe.log_with if name not in log_with]:
            self.accelerator.print(
                f"log: {', '.join(missing)} not installed (pip install {' '.join(missing)}); "
                "training curves go to the <stage>_log.jsonl files only"
            )
        if log_with:
            self.accelerator.init_trackers(recipe.name, config=flat_config(recipe_to_dict(recipe)))

    def dataset(self, split: str, views: tuple[str, ...] = ("teacher", "student")) -> VideoTextDataset:
        """The train or test pairs with a teacher view and a student view of every clip (or only `views`).

        Built once: malformed annotations stop the run; every video is opened once, and the pairs of a video
        that fails (or of an empty caption) are skipped, logged, and the video listed in `bad_videos.txt`.
        """
        if split not in self._datasets:
            r = self.recipe
            found = self.annotations(split)
            all_views = self.views()
            shards, why = open_shards(frames_folder(r.data, self.dir), frame_settings(r.data, all_views))
            self.accelerator.print(f"data: {split}: {why}")
            pairs, bad = check_videos(
                found.pairs, backend=r.data.backend, shards=shards, progress=self.accelerator.is_local_main_process
            )
            bad_list = self.dir / "bad_videos.txt"
            if self.accelerator.is_main_process:
                write_bad_videos(bad_list, bad, append=bool(self._datasets))  # the run's first dataset starts it
            if problems := found.problems + bad:
                skipped = len(found.problems) + len(found.pairs) - len(pairs)
                self.accelerator.print(
                    "\n".join(
                        [
                            f"data: {split}: {skipped} pairs skipped, {len(bad)} bad videos (listed in {bad_list}):",
                            *describe(problems, limit=20),
                        ]
                    ),
                    file=sys.stderr,
                )
            self._datasets[split] = VideoTextDataset(
                pairs,
                all_views,
                max_words=r.data.max_words,
                framerate=r.data.framerate,
                slice_framepos=r.data.slice_framepos,
                backend=r.data.backend,
                keep_decoded=r.data.keep_decoded,
                bad_videos=bad_list if split == "train" else None,
                shards=shards,
            )
        dataset = self._datasets[split]
        return dataset if tuple(dataset.views) == views else dataset.select_views(views)

    def annotations(self, split: str) -> Annotations:
        """The split's pairs as its annotation file names them; a malformed annotation stops the run."""
        found = read_split(self.recipe.data, split)
        if fatal := [p for p in found.problems if p.fatal]:
            raise ValueError(
                "\n".join(
                    [
                        f"data: malformed {split} annotations:",
                        *describe(fatal, limit=20),
                        "python -m distill.prepare --check RECIPE lists every problem",
                    ]
                )
            )
        return found

    def views(self) -> dict[str, View]:
        """The teacher and student views of every clip."""
        r = self.recipe
        if self.teacher is None and r.teacher.source is not None:
            # A given teacher brings its own input size, which the teacher view must use.
            self.teacher = load_teacher(r.teacher.source, device=self.accelerator.device, precision=r.teacher.precision)
        return recipe_views(r, None if self.teacher is None else self.teacher.arch["vision_cfg"]["image_size"])

    @property
    def cache_dir(self) -> Path:
        return self.dir / "teacher_cache"

    def cache_key(self) -> dict:
        """What the teacher cache of this run must have been made from: the train pairs, the sampling of the
        teacher's view (which the dataset takes from one decode of max(teacher, student) frames) and the teacher."""
        r, train = self.recipe, self.dataset("train")
        sampling = {
            "max_frames": train.views["teacher"].max_frames,
            "image_size": train.views["teacher"].size,
            "decode_frames": train.decode_frames,
            "framerate": r.data.framerate,
            "slice_framepos": r.data.slice_framepos,
            "max_words": r.data.max_words,
            "backend": r.data.backend,
            # raw frame shards hold the decoded frames exactly, JPEG ones within JPEG error
            "frames": "raw" if train.shards is None else train.shards.encoding,
        }
        return cache_key(train, self.teacher, sampling)

    def validation(self, trained: str) -> Callable[[nn.Module], dict[str, float]] | None:
        """What `train` logs each epoch for the model of the `trained` view: its R@1 on the first
        `eval.val_pairs` test pairs, and the frozen teacher's (computed once) when the student trains."""
        r = self.recipe
        if not r.eval.val_pairs:
            return None
        # Both views, as the test split has them: clips held in memory (data.keep_decoded) are shared with it.
        subset = self.dataset("test").subset(r.eval.val_pairs)
        frozen: dict[str, float] = {}

        def r1(model: nn.Module, view: str) -> dict[str, float]:
            metrics = model_metrics(
                {view: model},
                subset,
                batch_size=r.eval.batch_size,
                accelerator=self.accelerator,
                num_workers=r.data.num_workers,
            )[view]
            return {f"val_{view}_{direction}_R1": metrics[direction]["R1"] for direction in ("t2v", "v2t")}

        def validate(model: nn.Module) -> dict[str, float]:
            if trained == "student" and not frozen:
                frozen.update(r1(self.teacher, "teacher"))
            return {**frozen, **r1(model, trained)}

        return validate

    def stage_data(self) -> None:
        if self.recipe.data.format == "synthetic" and self.accelerator.is_main_process:
            generate_synthetic(self.recipe.data.root, self.recipe.data.synthetic)
        self.accelerator.wait_for_everyone()
        for split in ("train", "test"):
            self.accelerator.print(f"data: {len(self.dataset(split))} {split} pairs")

    def stage_prepare(self) -> None:
        """Decodes every video of both splits once into frame shards, as `python -m distill.prepare RECIPE`
        does, on the main process. The datasets built so far (the data stage's) decode videos: they are
        dropped, and built again on the shards when a later stage asks for them."""
        r = self.recipe
        if self.accelerator.is_main_process:
            videos = [pair.video for split in ("train", "test") for pair in self.annotations(split).pairs]
            folder = frames_folder(r.data, self.dir)
            shards = prepare_frames(
                videos,
                folder,
                frame_settings(r.data, self.views()),
                encoding=r.data.prepared_encoding,
                workers=r.data.num_workers,
                progress=True,
            )
            print(
                f"prepare: {len(shards)} videos as {shards.encoding} frames in {folder}"
                + (f"; {len(shards.failed)} could not be decoded" if shards.failed else "")
            )
        self.accelerator.wait_for_everyone()
        self._datasets.clear()

    def stage_teacher(self) -> None:
        r = self.recipe
        if r.teacher.source is None:
            set_seed(r.seed)
            model = CLIP4Clip(teacher_arch(r.teacher, r.data.max_words))
            loss = DistillationLoss(LossConfig(contrastive_weight=1.0), student_dim=0, teacher_dim=0)
            model = train(
                model,
                loss,
                self.dataset("train"),
                r.teacher.train,
                accelerator=self.accelerator,
                view="teacher",
                seed=r.seed,
                run_dir=self.dir,
                name="teacher",
                num_workers=r.data.num_workers,
                validate=self.validation("teacher"),
            )
            path = self.dir / "teacher.safetensors"
            if self.accelerator.is_main_process:
                save_teacher(model, path, recipe=json.dumps(recipe_to_dict(r)))
            self.accelerator.wait_for_everyone()
            self.accelerator.print(f"teacher: trained and saved to {path}")
            self.teacher = load_teacher(path, device=self.accelerator.device, precision=r.teacher.precision)
        elif self.teacher is None:  # dataset() may have loaded it already
            self.teacher = load_teacher(r.teacher.source, device=self.accelerator.device, precision=r.teacher.precision)

    def stage_cache(self) -> None:
        if self.teacher is None:
            self.stage_teacher()
        written = build_cache(
            self.cache_dir,
            self.teacher,
            self.dataset("train", ("teacher",)),
            self.cache_key(),
            accelerator=self.accelerator,
            batch_size=self.recipe.eval.batch_size,
            videos_per_shard=self.recipe.teacher.cache_videos_per_shard,
            num_workers=self.recipe.data.num_workers,
        )
        self.accelerator.print(
            f"cache: teacher outputs for {len(self.dataset('train'))} train pairs in "
            f"{self.cache_dir} (shards computed now: {written})"
        )

    def teacher_outputs(self) -> tuple[OnlineTeacher | TeacherCache, tuple[str, ...]]:
        """Where distillation gets the teacher's outputs (the cache when `teacher.cache` is true and it is
        there, else the teacher online) and which views of the clips it then needs."""
        if self.recipe.teacher.cache and (self.cache_dir / "manifest.json").is_file():
            try:
                cache = TeacherCache(self.cache_dir, self.cache_key(), self.teacher, device=self.accelerator.device)
            except CacheError as error:
                raise CacheError(f"distill: {error}") from None
            self.accelerator.print(f"distill: teacher outputs from {self.cache_dir}")
            return cache, ("student",)
        return OnlineTeacher(self.teacher), ("teacher", "student")

    def stage_distill(self) -> None:
        r = self.recipe
        if self.teacher is None:
            self.stage_teacher()  # stages without 'teacher' load teacher.source
        if scorer_for(self.teacher).pairwise and (term := embedding_term(r.loss)):
            raise ValueError(f"loss.{term}: a tightTransf teacher has no embeddings to match; set it to 0")
        teacher, views = self.teacher_outputs()
        set_seed(r.seed)
        config, text_weights = {**asdict(r.student), "max_words": r.data.max_words}, None
        if r.student.text == "teacher":
            if r.student.embed_dim != self.teacher.arch["embed_dim"]:
                raise ValueError(
                    f"student.embed_dim: {r.student.embed_dim}, but student.text=teacher embeds "
                    f"captions with the teacher's {self.teacher.arch['embed_dim']}-d text tower; set "
                    f"student.embed_dim={self.teacher.arch['embed_dim']}"
                )
            config["teacher_text"], text_weights = teacher_text_tower(self.teacher, r.data.max_words)
        student = Student(config)
        if text_weights is not None:
            student.text.load_state_dict(text_weights)
        if not (r.loss.kl_weight or r.loss.contrastive_weight):
            # No term reads the logit scale, and DDP refuses a parameter that gets no gradient.
            student.logit_scale_log.requires_grad_(False)
        loss = DistillationLoss(r.loss, student_dim=r.student.embed_dim, teacher_dim=self.teacher.arch["embed_dim"])
        self.student = train(
            student,
            loss,
            self.dataset("train", views),
            r.train,
            accelerator=self.accelerator,
            view="student",
            seed=r.seed,
            run_dir=self.dir,
            name="distill",
            teacher=teacher,
            num_workers=r.data.num_workers,
            validate=self.validation("student"),
        )
        round_weights(self.student, r.export.dtype)  # what ships is what the evaluate stage measures
        self.accelerator.print("distill: student trained")

    def stage_evaluate(self) -> None:
        if self.teacher is None:
            self.stage_teacher()
        if self.student is None:
            self.student = load_student(self.dir / "student.safetensors", device=self.accelerator.device)
        test = self.dataset("test")
        report = evaluate(
            {"teacher": self.teacher, "student": self.student},
            test,
            batch_size=self.recipe.eval.batch_size,
            accelerator=self.accelerator,
            num_workers=self.recipe.data.num_workers,
        )
        self.report = {"name": self.recipe.name, **report}
        if self.accelerator.is_main_process:
            write_reports(self.report, self.dir)
        t, s = report["teacher"]["t2v"]["R1"], report["student"]["t2v"]["R1"]
        self.accelerator.print(
            f"evaluate: text-to-video R@1 teacher {t:.1f}, student {s:.1f} "
            f"({100 * s / max(t, 1e-9):.1f}% of the teacher); {self.dir / 'report.md'}"
        )

    def stage_export(self) -> None:
        if self.student is None:
            raise ValueError("export: no student trained in this run; add the 'distill' stage")
        r = self.recipe
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            metadata = {
                "recipe": json.dumps(recipe_to_dict(r)),
                "preprocessing": json.dumps(
                    {
                        "max_frames": r.student.max_frames,
                        "image_size": r.student.image_size,
                        "mean": CLIP_MEAN,
                        "std": CLIP_STD,
                        "max_words": r.data.max_words,
                        "framerate": r.data.framerate,
                        "slice_framepos": r.data.slice_framepos,
                    }
                ),
            }
            if self.report is not None:
                metadata["metrics"] = json.dumps(self.report["student"])
            path = export_student(self.student, self.dir / "student.safetensors", metadata, dtype=r.export.dtype)
            self.accelerator.print(f"export: student saved to {path}")


def run_recipe(recipe: Recipe) -> Run:
    """Runs the recipe's stages in order and returns the finished run."""
    run = Run(recipe)
    try:
        for stage in recipe.stages:
            getattr(run, f"stage_{stage}")()
        run.accelerator.wait_for_everyone()
    finally:
        end_training(run.accelerator)
    return run
