"""The recipe schema: nested dataclasses, one comment per field, and the checks that need no files or models.

It imports nothing of the run: `distill.recipe.load_recipe` reads a YAML file into it and checks what needs
files and models; `students` and `teachers` read their sections from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args


@dataclass
class SyntheticConfig:
    num_train: int = 1600  # training videos (one caption each)
    num_test: int = 200  # test videos, never trained on
    size: int = 64  # frame height and width in pixels
    fps: int = 4  # frames per second of the written .mp4
    seconds: int = 8  # clip length
    seed: int = 0  # the dataset depends on this seed only, so runs with other seeds share it
    # shapes: flat colours on a plain background, a still camera; scenes: the same captions over textured
    # backdrops and objects, a panning camera, distractors and near-duplicate twins (distill.data.scenes)
    style: Literal["shapes", "scenes"] = "shapes"


@dataclass
class DataConfig:
    # Annotation layout (docs/datasets.md): synthetic, the generic jsonl and csv, or CLIP4Clip's datasets.
    # synthetic, jsonl, csv, msrvtt, msvd, lsmdc, activitynet, didemo: distill.data.formats.FORMATS, checked there
    format: str = "synthetic"
    root: str = "data/demo"  # synthetic: where the dataset is generated (and reused by later runs)
    annotations: str | None = None  # msrvtt, msvd, lsmdc, activitynet, didemo: folder of the annotation files
    train: str | None = None  # training annotation file (relative to `annotations` when set); jsonl, csv: required
    test: str | None = None  # test annotation file; the CLIP4Clip formats default both to CLIP4Clip's files
    # Share of the training videos held out as the validation split (by a hash of each video's file name:
    # deterministic, by video, see distill.data.splits): the per-epoch validation and every recipe choice
    # read it, the test split only the final report. 0: no validation split, no per-epoch validation.
    val_fraction: float = 0.1
    video_root: str | None = None  # every format but synthetic: folder of the videos
    backend: Literal["decord", "pyav"] = "decord"  # decoder; pyav where decord has no wheel (aarch64, macOS arm64)
    max_words: int = 32  # caption length in tokens, start and end tokens included (CLIP4Clip: 32)
    framerate: int = 1  # frames per second kept before slicing to max_frames (CLIP4Clip's feature_framerate)
    slice_framepos: Literal[0, 1, 2] = 2  # 0 head, 1 tail, 2 uniform (CLIP4Clip's slice_framepos)
    keep_decoded: bool = False  # hold decoded frames in memory after the first read (small datasets only)
    # Frame shards written by `python -m distill.prepare RECIPE` or the prepare stage, read instead of the videos
    # when they were prepared with this recipe's sampling and sizes; unset: <output_dir>/frames.
    prepared: str | None = None
    # How prepare stores frames: jpeg (quality 90, about 7x smaller at 224 px), raw uint8 (exactly the decoded
    # frames), or auto: raw when every view is at most 64 px (small, and 3-4x faster to read), else jpeg.
    prepared_encoding: Literal["auto", "jpeg", "raw"] = "auto"
    # DataLoader worker processes for training, the teacher cache and evaluation (and prepare's decoding);
    # 0: in the main process.
    num_workers: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


Stage = Literal["data", "prepare", "teacher", "cache", "distill", "evaluate", "export"]
STAGE_ORDER = get_args(Stage)


@dataclass
class TrainConfig:
    batch_size: int = 64  # global batch: the same whatever the number of processes
    epochs: int = 10  # the most a stage trains (with patience 0: exactly this many)
    max_steps: int | None = None  # optimizer steps; overrides epochs when set
    # Micro-batches per optimizer step; the losses still span the whole batch (GradCache: one extra
    # forward pass of the student per step), so a large batch fits in memory at the cost of time.
    accumulate: int = 1
    lr: float = 1e-3  # peak learning rate of AdamW, for the new parts of the model
    # multiplies lr for pretrained weights (student.pretrained, teacher.init's CLIP), as CLIP4Clip's coef_lr
    coef_lr: float = 1.0
    weight_decay: float = 0.05  # AdamW weight decay
    warmup_ratio: float = 0.1  # fraction of the most steps with a linear warmup of the learning rate
    # Epochs without a validation improvement (R@1 of the model in training, mean of t2v and v2t) after which
    # the learning rate decays (decay_epochs) and training stops, the best epoch's weights kept
    # (distill.training.schedule); 0: off, a cosine over all the epochs and the last step's weights
    patience: int = 0
    min_delta: float = 0.0  # R@1 points (percent) above the best so far that count as an improvement
    decay_epochs: int = 1  # with patience: epochs of the final cosine decay to zero, at the stall or the maximum's end
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
    patch_size: int = 8  # ViT patch side in pixels
    vision_width: int = 192  # ViT width
    vision_layers: int = 4  # ViT depth
    text_width: int = 128  # also the embedding width, as CLIP4Clip's heads require
    text_layers: int = 3  # text transformer depth
    cross_layers: int = 2  # layers of the seqTransf temporal transformer or the tightTransf cross encoder
    train: TrainConfig = field(default_factory=TrainConfig)
    # The teacher stage trains on a random crop of every clip each epoch (distill.training.augment): sides a fraction
    # of the frame's drawn from [crop_scale, 1], the same crop for all of a clip's frames, resized back;
    # 1 turns it off
    crop_scale: float = 1.0


@dataclass
class StudentConfig:
    # The frame encoder: any timm model name, or open_clip:NAME, the image tower of that open_clip model
    # (e.g. open_clip:MobileCLIP2-S0), whose output is its CLIP embedding (students.towers)
    backbone: str = "vit_tiny_patch16_224"
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model or open_clip.create_model
    # Local weights for the backbone: for timm, its state dict in timm's layout (.safetensors, .pth, .bin: e.g.
    # ImageNet MobileNetV4); timm adapts them (position embeddings to img_size, classifier dropped) and a file of
    # another architecture stops the recipe. For open_clip:NAME, the file open_clip.create_model(NAME,
    # pretrained=FILE) loads (the whole CLIP model: with text: open_clip its text tower is used too). Trained at
    # train.lr * train.coef_lr.
    pretrained: str | None = None
    # A student export (or its model card folder) whose weights the distill stage starts from instead of
    # random ones, e.g. a shipped student fine-tuned on new data; the keys here must describe its architecture.
    init: str | None = None
    max_frames: int = 8  # frames the student sees per video
    image_size: int = 32  # input resolution of the frame encoder
    temporal: Literal["mean", "transformer"] = "transformer"  # how frame features become one video vector
    temporal_layers: int = 1  # layers of the temporal transformer (temporal: transformer)
    embed_dim: int = 96  # width of the student's joint embedding space
    # own: a small text transformer of text_width, text_layers and text_heads, trained; teacher: the
    # teacher's text tower, frozen and shipped in the export (needs embed_dim equal to the teacher's): the
    # student embeds captions exactly as the teacher does, so its videos are searchable with teacher text;
    # inherit: an own tower of text_layers of the teacher's layers, evenly spaced, and its embeddings
    # (TinyCLIP's weight inheritance; text_width and text_heads the teacher's), trained; open_clip: the text
    # tower of the open_clip:NAME backbone's model, with its weights from student.pretrained (embed_dim its
    # embedding width), trained, read at open_clip's context length
    text: Literal["own", "teacher", "inherit", "open_clip"] = "own"
    text_width: int = 96  # width of an own text tower (text: own or inherit)
    text_layers: int = 2  # its depth (inherit: that many of the teacher's layers)
    text_heads: int = 4  # its attention heads
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
    cross_temperature: float = 0.07  # the cross-model term's scale starts at 1 / this (CLIP's 0.07)
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
    name: str = "demo"  # names the run (and its folder, runs/<name>, unless output_dir is set)
    output_dir: str | None = None  # default runs/<name>
    seed: int = 0  # seeds every random draw of training (the synthetic data has its own seed)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # for every stage: teacher training, distillation, eval
    # Accelerate trackers for the training curves, each used when its package is installed (pip install
    # tensorboard / wandb), under output_dir/logs; the <stage>_log.jsonl files are always written.
    log_with: list[Literal["tensorboard", "wandb"]] = field(default_factory=lambda: ["tensorboard"])
    # What the run does, a subset of data, prepare, teacher, cache, distill, evaluate, export, always in that
    # order (docs/recipes.md says what each does)
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
    "train.decay_epochs",
    "teacher.train.decay_epochs",
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
    "train.patience",
    "train.min_delta",
    "teacher.train.patience",
    "teacher.train.min_delta",
    "teacher.train.coef_lr",
    "student.token_rank",
)


def embedding_term(loss: LossConfig) -> str | None:
    """The first loss setting that needs teacher embeddings, which a tightTransf teacher lacks."""
    names = ("feature_weight", "cross_weight", "teacher_logit_scale")
    return next((name for name in names if getattr(loss, name)), None)
