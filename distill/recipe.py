"""The recipe schema: nested dataclasses, one comment per field.

`load_recipe` reads a YAML file strictly (see `distill.config`), applies `dotted.key=value` overrides and
checks what only the whole recipe can tell (files that must exist, stage combinations).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Literal, get_args

from distill.config import RecipeError, load_dataclass
from distill.data.config import DataConfig
from distill.data.formats import check_data_files

Stage = Literal["data", "prepare", "teacher", "cache", "distill", "evaluate", "export"]
STAGE_ORDER = get_args(Stage)


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch: the same whatever the number of processes
    epochs: int = 10
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    # Micro-batches per optimizer step; the losses still span the whole batch (GradCache: one extra
    # forward pass of the student per step), so a large batch fits in memory at the cost of time.
    accumulate: int = 1
    lr: float = 1e-3
    # multiplies lr for pretrained weights (student.pretrained, teacher.init's CLIP), as CLIP4Clip's coef_lr
    coef_lr: float = 1.0
    weight_decay: float = 0.05
    warmup_ratio: float = 0.1  # fraction of the steps with a linear warmup, then cosine decay
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints; 0: only at the end
    resume: Literal["auto"] | None = None  # auto: continue from the newest checkpoint in output_dir
    log_every: int = 10  # optimizer steps between log lines


@dataclass
class TeacherConfig:
    source: str | None = None  # anything load_teacher takes; unset: the teacher stage trains one
    # A teacher (anything load_teacher takes) that the teacher stage fine-tunes on the train pairs instead of
    # training one from random weights, as CLIP4Clip fine-tunes CLIP: it keeps its own architecture (the keys
    # below are then unused), and its CLIP weights train at teacher.train.lr * teacher.train.coef_lr.
    init: str | None = None
    # More teachers (load_teacher sources, frozen) for the KL term, whose target is then the mean of every
    # teacher's similarity distribution, after the softmax (MobileCLIP); feature matching and the
    # cross-model term read the first teacher (source, or the one trained here). Each is cached once.
    # They read the teacher view: their input size must be the first teacher's.
    ensemble: list[str] = field(default_factory=list)
    max_frames: int = 8  # frames the teacher sees per video
    # How the frozen teacher computes (online, cache, evaluation): auto is bf16 autocast on CUDA, float32
    # elsewhere; fp32 gives the original CLIP4Clip numbers exactly on any device.
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # true: distill reads the teacher's outputs from output_dir/teacher_cache (the 'cache' stage writes it)
    # when it is there, and refuses one made for other data, sampling or teacher; false: the teacher runs online.
    cache: bool = True
    # Videos per cache shard. The processes of the cache stage share the shards, so smaller shards spread it
    # over more GPUs; a killed cache stage loses at most the shards in progress.
    cache_videos_per_shard: int = 1024
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
    # The teacher stage trains on a random crop of every clip each epoch (distill.augment): sides a fraction
    # of the frame's drawn from [crop_scale, 1], the same crop for all of a clip's frames, resized back;
    # 1 turns it off
    crop_scale: float = 1.0


@dataclass
class StudentConfig:
    backbone: str = "vit_tiny_patch16_224"  # any timm model name
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model (img_size, depth, ...)
    # Local timm weights for the backbone (.safetensors, .pth, .bin: e.g. ImageNet ViT-Tiny); timm adapts
    # them (position embeddings to img_size, classifier dropped). Trained at train.lr * train.coef_lr.
    pretrained: str | None = None
    # A student export (or its model card folder) whose weights the distill stage starts from instead of
    # random ones, e.g. a shipped student fine-tuned on new data; the keys here must describe its architecture.
    init: str | None = None
    max_frames: int = 8
    image_size: int = 32
    temporal: Literal["mean", "transformer"] = "transformer"  # how frame features become one video vector
    temporal_layers: int = 1
    embed_dim: int = 96  # width of the student's joint embedding space
    # own: a small text transformer of text_width, text_layers and text_heads, trained; teacher: the
    # teacher's text tower, frozen and shipped in the export (needs embed_dim equal to the teacher's): the
    # student embeds captions exactly as the teacher does, so its videos are searchable with teacher text;
    # inherit: an own tower of text_layers of the teacher's layers, evenly spaced, and its embeddings
    # (TinyCLIP's weight inheritance; text_width and text_heads the teacher's), trained
    text: Literal["own", "teacher", "inherit"] = "own"
    text_width: int = 96
    text_layers: int = 2
    text_heads: int = 4
    # 0: a full token embedding (49,408 x text_width, most of a small student's parameters); r > 0: 49,408 x r
    # followed by an r x text_width matrix (ALBERT's factorised embedding): every caption stays encodable
    # with a fraction of the parameters. An own text tower only.
    token_rank: int = 0


@dataclass
class LossConfig:
    kl_weight: float = 1.0  # KL(teacher || student) on t2v and v2t similarity rows
    kl_temperature: float = 1.0  # divides both models' logits before the softmax
    # How that term compares the rows: "kl", KL(teacher || student); "pearson", 1 - the Pearson correlation
    # of the softmaxed rows (TeachCLIP's default, blind to how sharp each row is)
    kl_form: Literal["kl", "pearson"] = "kl"
    # 0: the teacher's logits at its own learned logit scale; > 0: the teacher's cosines times this (TinyCLIP
    # and MobileCLIP fix it at 100 and 50-70), sharper targets than a teacher whose scale stayed low
    teacher_logit_scale: float = 0.0
    # MSE between normalised student (projected) and teacher embeddings: 2 - 2 cos, so also the cosine loss
    feature_weight: float = 1.0
    # Cross-model contrastive (CLIP-KD's ICL): student videos against teacher captions and student captions
    # against teacher videos, at a learned scale starting at 1 / cross_temperature
    cross_weight: float = 0.0
    cross_temperature: float = 0.07
    contrastive_weight: float = 1.0  # symmetric InfoNCE on the ground-truth pairs, at the student's logit scale


@dataclass
class EvalConfig:
    batch_size: int = 64  # videos or captions per encoding batch
    # At most this many pairs of the validation split (data.val_fraction): teacher and student R@1 on them at
    # the end of every training epoch, in the <stage>_log.jsonl files and the trackers; 0 turns it off
    val_pairs: int = 1000


@dataclass
class ExportConfig:
    # Float type of the weights in student.safetensors (loaded back as float32). The student is rounded to
    # it when distillation ends, so evaluation measures the weights that ship; fp16 halves the file.
    dtype: Literal["fp32", "fp16", "bf16"] = "fp16"


@dataclass
class Recipe:
    name: str = "demo"
    output_dir: str | None = None  # default runs/<name>
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
    export: ExportConfig = field(default_factory=ExportConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}")


# Values that must be above zero (a zero batch or temperature fails late and obscurely) or at least zero.
POSITIVE = (
    "train.batch_size",
    "train.accumulate",
    "train.lr",
    "teacher.train.batch_size",
    "teacher.train.accumulate",
    "teacher.train.lr",
    "teacher.max_frames",
    "teacher.cache_videos_per_shard",
    "student.max_frames",
    "loss.kl_temperature",
    "loss.cross_temperature",
    "eval.batch_size",
)
NON_NEGATIVE = (
    "eval.val_pairs",
    "loss.kl_weight",
    "loss.teacher_logit_scale",
    "loss.feature_weight",
    "loss.cross_weight",
    "loss.contrastive_weight",
    "train.coef_lr",
    "teacher.train.coef_lr",
    "student.token_rank",
)


def embedding_term(loss: LossConfig) -> str | None:
    """The first loss setting that needs teacher embeddings, which a tightTransf teacher lacks."""
    names = ("feature_weight", "cross_weight", "teacher_logit_scale")
    return next((name for name in names if getattr(loss, name)), None)


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
    from distill.context import teacher_arch  # torch and open_clip, only for recipes that need them
    from students.model import TextTower, check_inheritance

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
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.max_steps=20")
    args = parser.parse_args(argv)
    try:  # a --check (distill.prepare) reads only the data
        return args, load_recipe(args.recipe, args.overrides, data_only=getattr(args, "check", False))
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return args, None
