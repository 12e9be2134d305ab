"""The stages of a run, in order: data, teacher, distill, evaluate, export.

Each stage reads what earlier stages (of this run or an earlier one) left in the run folder or the data
root, and writes its own results there.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, set_seed

from distill.config import recipe_to_dict, save_recipe
from distill.data.checks import check_videos, describe, write_bad_videos
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import read_split
from distill.data.synthetic import generate_synthetic
from distill.data.video import CLIP_MEAN, CLIP_STD
from distill.evaluate import evaluate, write_reports
from distill.losses import DistillationLoss
from distill.recipe import LossConfig, Recipe, TeacherConfig
from distill.train import train
from students import Student, export_student, load_student
from teachers import CLIP4Clip, load_teacher, save_teacher


def teacher_arch(config: TeacherConfig, max_words: int) -> dict:
    """The CLIP4Clip architecture of a teacher trained from scratch by the teacher stage."""
    width = config.text_width
    return {
        "embed_dim": width,  # CLIP4Clip's heads need the embedding width equal to the text width
        "vision_cfg": {"image_size": config.image_size, "patch_size": config.patch_size,
                       "width": config.vision_width, "layers": config.vision_layers, "head_width": 64},
        "text_cfg": {"context_length": max_words, "vocab_size": 49408, "width": width,
                     "heads": max(1, width // 64), "layers": config.text_layers},
        "sim_header": config.sim_header,
        "cross_layers": config.cross_layers,
    }


class Run:
    """One run of a recipe: the Accelerator, the datasets and the models the stages pass along."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.dir = recipe.run_dir
        self.accelerator = Accelerator(mixed_precision=recipe.mixed_precision,
                                       dataloader_config=DataLoaderConfiguration(split_batches=True))
        self.teacher: CLIP4Clip | None = None
        self.student: Student | None = None
        self.report: dict | None = None
        self._datasets: dict[str, VideoTextDataset] = {}
        if self.accelerator.is_main_process:
            self.dir.mkdir(parents=True, exist_ok=True)
            save_recipe(recipe, self.dir / "recipe.yaml")
        self.accelerator.wait_for_everyone()

    def dataset(self, split: str) -> VideoTextDataset:
        """The train or test pairs with a teacher view and a student view of every clip.

        Built once: malformed annotations stop the run; every video is opened once, and the pairs of a video
        that fails (or of an empty caption) are skipped, logged, and the video listed in `bad_videos.txt`.
        """
        if split not in self._datasets:
            r = self.recipe
            found = read_split(r.data, split)
            if fatal := [p for p in found.problems if p.fatal]:
                raise ValueError("\n".join([f"data: malformed {split} annotations:", *describe(fatal, limit=20),
                                            "python -m distill.prepare --check RECIPE lists every problem"]))
            pairs, bad = check_videos(found.pairs, backend=r.data.backend,
                                      progress=self.accelerator.is_local_main_process)
            bad_list = self.dir / "bad_videos.txt"
            if self.accelerator.is_main_process:
                write_bad_videos(bad_list, bad, append=bool(self._datasets))  # the run's first dataset starts it
            if problems := found.problems + bad:
                skipped = len(found.problems) + len(found.pairs) - len(pairs)
                self.accelerator.print(
                    "\n".join([f"data: {split}: {skipped} pairs skipped, {len(bad)} bad videos (listed in {bad_list}):",
                               *describe(problems, limit=20)]), file=sys.stderr)
            teacher_size = (self.teacher.arch["vision_cfg"]["image_size"] if self.teacher is not None
                            else r.teacher.image_size)
            views = {"teacher": View(r.teacher.max_frames, teacher_size),
                     "student": View(r.student.max_frames, r.student.image_size)}
            self._datasets[split] = VideoTextDataset(
                pairs, views, max_words=r.data.max_words, framerate=r.data.framerate,
                slice_framepos=r.data.slice_framepos, backend=r.data.backend, keep_decoded=r.data.keep_decoded,
                bad_videos=bad_list if split == "train" else None)
        return self._datasets[split]

    def stage_data(self) -> None:
        if self.recipe.data.format == "synthetic" and self.accelerator.is_main_process:
            generate_synthetic(self.recipe.data.root, self.recipe.data.synthetic)
        self.accelerator.wait_for_everyone()
        for split in ("train", "test"):
            self.accelerator.print(f"data: {len(self.dataset(split))} {split} pairs")

    def stage_teacher(self) -> None:
        r = self.recipe
        if r.teacher.source is None:
            set_seed(r.seed)
            model = CLIP4Clip(teacher_arch(r.teacher, r.data.max_words))
            loss = DistillationLoss(LossConfig(contrastive_weight=1.0), student_dim=0, teacher_dim=0)
            model = train(model, loss, self.dataset("train"), r.teacher.train, accelerator=self.accelerator,
                          view="teacher", seed=r.seed, run_dir=self.dir, name="teacher")
            path = self.dir / "teacher.safetensors"
            if self.accelerator.is_main_process:
                save_teacher(model, path, recipe=json.dumps(recipe_to_dict(r)))
            self.accelerator.wait_for_everyone()
            self.accelerator.print(f"teacher: trained and saved to {path}")
            self.teacher = load_teacher(path, device=self.accelerator.device)
        else:
            self.teacher = load_teacher(r.teacher.source, device=self.accelerator.device)

    def stage_distill(self) -> None:
        r = self.recipe
        if self.teacher is None:
            self.stage_teacher()  # stages without 'teacher' load teacher.source
        if self.teacher.is_tight and r.loss.feature_weight:
            raise ValueError("loss.feature_weight: a tightTransf teacher has no embeddings to match; set it to 0")
        set_seed(r.seed)
        student = Student({**asdict(r.student), "max_words": r.data.max_words})
        if not (r.loss.kl_weight or r.loss.contrastive_weight):
            # No term reads the logit scale, and DDP refuses a parameter that gets no gradient.
            student.logit_scale_log.requires_grad_(False)
        loss = DistillationLoss(r.loss, student_dim=r.student.embed_dim, teacher_dim=self.teacher.arch["embed_dim"])
        self.student = train(student, loss, self.dataset("train"), r.train, accelerator=self.accelerator,
                             view="student", seed=r.seed, run_dir=self.dir, name="distill", teacher=self.teacher)
        self.accelerator.print("distill: student trained")

    def stage_evaluate(self) -> None:
        if self.teacher is None:
            self.stage_teacher()
        if self.student is None:
            self.student = load_student(self.dir / "student.safetensors", device=self.accelerator.device)
        test = self.dataset("test")
        report = evaluate({"teacher": self.teacher, "student": self.student}, test,
                          batch_size=self.recipe.eval.batch_size, accelerator=self.accelerator)
        self.report = {"name": self.recipe.name, "test_pairs": len(test), **report}
        if self.accelerator.is_main_process:
            write_reports(self.report, self.dir)
        t, s = report["teacher"]["t2v"]["R1"], report["student"]["t2v"]["R1"]
        self.accelerator.print(f"evaluate: text-to-video R@1 teacher {t:.1f}, student {s:.1f} "
                               f"({100 * s / max(t, 1e-9):.1f}% of the teacher); {self.dir / 'report.md'}")

    def stage_export(self) -> None:
        if self.student is None:
            raise ValueError("export: no student trained in this run; add the 'distill' stage")
        r = self.recipe
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            metadata = {
                "recipe": json.dumps(recipe_to_dict(r)),
                "preprocessing": json.dumps({
                    "max_frames": r.student.max_frames, "image_size": r.student.image_size,
                    "mean": CLIP_MEAN, "std": CLIP_STD, "max_words": r.data.max_words,
                    "framerate": r.data.framerate, "slice_framepos": r.data.slice_framepos}),
            }
            if self.report is not None:
                metadata["metrics"] = json.dumps(self.report["student"])
            path = export_student(self.student, self.dir / "student.safetensors", metadata)
            self.accelerator.print(f"export: student saved to {path}")


def run_recipe(recipe: Recipe) -> Run:
    """Runs the recipe's stages in order and returns the finished run."""
    run = Run(recipe)
    try:
        for stage in recipe.stages:
            getattr(run, f"stage_{stage}")()
    finally:
        run.accelerator.end_training()
    return run
