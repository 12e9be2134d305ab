"""The recipe schema: nested dataclasses, one comment per field.

`load_recipe` reads a YAML file strictly (see `distill.config`), applies `dotted.key=value` overrides and
checks what only the whole recipe can tell (files that must exist, stage combinations).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Sequence, get_args

from distill.config import RecipeError, load_dataclass
from distill.data.formats import DEFAULT_FILES, annotation_file

Stage = Literal["data", "teacher", "cache", "distill", "evaluate", "export"]
STAGE_ORDER = get_args(Stage)


@dataclass
class SyntheticConfig:
    num_train: int = 1600  # training videos (one caption each)
    num_test: int = 200  # test videos, never trained on
    size: int = 64  # frame height and width in pixels
    fps: int = 4  # frames per second of the written .mp4
    seconds: int = 8  # clip length
    seed: int = 0  # the dataset depends on this seed only, so runs with other seeds share it


@dataclass
class DataConfig:
    # Annotation layout (README "Datasets"): synthetic, the generic jsonl and csv, or CLIP4Clip's datasets.
    format: Literal["synthetic", "jsonl", "csv", "msrvtt", "msvd", "lsmdc", "activitynet", "didemo"] = "synthetic"
    root: str = "data/demo"  # synthetic: where the dataset is generated (and reused by later runs)
    annotations: Optional[str] = None  # msrvtt, msvd, lsmdc, activitynet, didemo: folder of the annotation files
    train: Optional[str] = None  # training annotation file (relative to `annotations` when set); jsonl, csv: required
    test: Optional[str] = None  # test annotation file; the CLIP4Clip formats default both to CLIP4Clip's files
    video_root: Optional[str] = None  # every format but synthetic: folder of the videos
    backend: Literal["decord", "pyav"] = "decord"  # decoder; pyav where decord has no wheel (aarch64, macOS arm64)
    max_words: int = 32  # caption length in tokens, start and end tokens included (CLIP4Clip: 32)
    framerate: int = 1  # frames per second kept before slicing to max_frames (CLIP4Clip's feature_framerate)
    slice_framepos: Literal[0, 1, 2] = 2  # 0 head, 1 tail, 2 uniform (CLIP4Clip's slice_framepos)
    keep_decoded: bool = False  # hold decoded frames in memory after the first read (small datasets only)
    # Frame shards written by `python -m distill.prepare RECIPE`, read instead of the videos when they were
    # prepared with this recipe's sampling and sizes; unset: <output_dir>/frames.
    prepared: Optional[str] = None
    num_workers: int = 0  # DataLoader worker processes for training (and prepare's decoding); 0: in the main process
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch: the same whatever the number of processes
    epochs: int = 10
    max_steps: Optional[int] = None  # optimizer steps; overrides epochs when set
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1  # fraction of the steps with a linear warmup, then cosine decay
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints; 0: only at the end
    resume: Optional[Literal["auto"]] = None  # auto: continue from the newest checkpoint in output_dir
    log_every: int = 10  # optimizer steps between log lines


@dataclass
class TeacherConfig:
    source: Optional[str] = None  # anything load_teacher takes; unset: the teacher stage trains one
    max_frames: int = 8  # frames the teacher sees per video
    # true: distill reads the teacher's outputs from output_dir/teacher_cache (the 'cache' stage writes it)
    # when it is there, and refuses one made for other data, sampling or teacher; false: the teacher runs online.
    cache: bool = True
    # The architecture of a teacher trained here (a loaded teacher brings its own):
    sim_header: Literal["meanP", "seqLSTM", "seqTransf", "tightTransf"] = "seqTransf"
    image_size: int = 32  # input resolution
    patch_size: int = 8
    vision_width: int = 192
    vision_layers: int = 4
    text_width: int = 128  # also the embedding width, as CLIP4Clip's heads require
    text_layers: int = 3
    cross_layers: int = 2  # layers of the seqTransf temporal transformer or the tightTransf cross encoder
    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class StudentConfig:
    backbone: str = "vit_tiny_patch16_224"  # any timm model name
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model (img_size, depth, ...)
    max_frames: int = 8
    image_size: int = 32
    temporal: Literal["mean", "transformer"] = "transformer"  # how frame features become one video vector
    temporal_layers: int = 1
    embed_dim: int = 96  # width of the student's joint embedding space
    text_width: int = 96
    text_layers: int = 2
    text_heads: int = 4


@dataclass
class LossConfig:
    kl_weight: float = 1.0  # KL(teacher || student) on t2v and v2t similarity rows
    kl_temperature: float = 1.0  # divides both models' logits before the softmax
    feature_weight: float = 1.0  # MSE between normalised student (projected) and teacher embeddings
    contrastive_weight: float = 1.0  # symmetric InfoNCE on the ground-truth pairs


@dataclass
class EvalConfig:
    batch_size: int = 64  # videos or captions per encoding batch


@dataclass
class Recipe:
    name: str = "demo"
    output_dir: Optional[str] = None  # default runs/<name>
    seed: int = 0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # for every stage: teacher training, distillation, eval
    # Accelerate trackers for the training curves, each used when its package is installed (pip install
    # tensorboard / wandb), under output_dir/logs; the <stage>_log.jsonl files are always written.
    log_with: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    stages: list[Stage] = field(default_factory=lambda: ["data", "teacher", "distill", "evaluate", "export"])
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> Recipe:
    """Reads, overrides and checks a recipe; every problem is a `RecipeError` naming the key or file."""
    recipe = load_dataclass(Recipe, path, overrides)
    order = [STAGE_ORDER.index(s) for s in recipe.stages]
    if not order or order != sorted(set(order)):
        raise RecipeError(
            f"stages: {recipe.stages} must be a non-empty list of distinct stages in the order {list(STAGE_ORDER)}")
    data = recipe.data
    if data.format != "synthetic":
        for key in ["video_root"] + (["annotations"] if data.format in DEFAULT_FILES else ["train", "test"]):
            if getattr(data, key) is None:
                raise RecipeError(f"data.{key}: required when data.format is {data.format}")
        for key in ("video_root", "annotations"):
            if getattr(data, key) is not None and not Path(getattr(data, key)).is_dir():
                raise RecipeError(f"data.{key}: no such folder: {getattr(data, key)}")
        for split in ("train", "test"):
            if not annotation_file(data, split).is_file():
                raise RecipeError(f"data.{split}: no such file: {annotation_file(data, split)}")
    if recipe.data.format == "synthetic" and "data" not in recipe.stages \
            and not (Path(recipe.data.root) / "manifest.json").is_file():
        raise RecipeError(f"data.root: no synthetic dataset in {recipe.data.root}; add the 'data' stage to make it")
    source = recipe.teacher.source
    if source is not None and source.startswith("open_clip:"):
        from teachers import parse_open_clip_source  # torch and open_clip, only for recipes that need them
        try:
            _, weights = parse_open_clip_source(source)
        except ValueError as error:
            raise RecipeError(f"teacher.source: {error}") from None
        if not weights.is_file():
            raise RecipeError(f"teacher.source: no such weights file: {weights} (the pretrained= file of {source})")
    elif source is not None and not Path(source).is_file():
        raise RecipeError(f"teacher.source: no such file: {source}")
    if source is None and "teacher" not in recipe.stages and {"cache", "distill", "evaluate"} & set(recipe.stages):
        raise RecipeError("teacher.source: required when the stages do not include 'teacher'")
    if "cache" in recipe.stages and not recipe.teacher.cache:
        raise RecipeError("teacher.cache: false, but the stages include 'cache'; drop one of them")
    if source is None and recipe.teacher.sim_header == "tightTransf" and recipe.loss.feature_weight \
            and "distill" in recipe.stages:
        raise RecipeError("loss.feature_weight: a tightTransf teacher has no embeddings to match; set it to 0")
    return recipe


def parse_recipe_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None
                      ) -> tuple[argparse.Namespace, Recipe | None]:
    """Adds the `RECIPE.yaml [dotted.key=value ...]` arguments, parses `argv` and loads the recipe; on a
    `RecipeError` prints it and gives `None`, for the caller to exit with 2 before any work."""
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.max_steps=20")
    args = parser.parse_args(argv)
    try:
        return args, load_recipe(args.recipe, args.overrides)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return args, None
