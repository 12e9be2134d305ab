"""The student: a timm backbone per frame, a temporal head, a projection, and a small text transformer.

It has the same face as a teacher (`encode_text`, `encode_video`, `similarity_logits`, `forward` returning
a dict), so the training loop, evaluation and export treat both alike.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from einops import rearrange
from open_clip.transformer import QuickGELU, TextTransformer, Transformer
from torch import nn

from distill.core.schema import StudentConfig
from students.towers import CLIP_MEAN, CLIP_STD, Towers, build_towers, check_backbone_name
from teachers.clip4clip import key_mask_bias, masked_mean
from teachers.tokenizer import pad_ids

VOCAB_SIZE = 49408  # CLIP BPE: the student reads the same token ids as the teacher


@dataclass(frozen=True)
class Preprocessing:
    """How a model reads a clip and a caption: CLIP4Clip's sampling, the frame size (CLIP's mean and std
    normalise it), the caption length in tokens. A student's ships in its export."""

    max_frames: int
    image_size: int
    max_words: int = 32
    framerate: int = 1
    slice_framepos: int = 2

    @classmethod
    def read(cls, found: dict) -> Preprocessing:
        """From an export's `preprocessing` record, which also holds fields for other readers (mean, std)."""
        return cls(**{f.name: found[f.name] for f in fields(cls) if f.name in found})


@dataclass(frozen=True)
class TextTower:
    """The sizes of a text tower from the teacher: its own (`student.text=teacher`, `teacher_text_tower`)
    or one inherited from it (`inherit`, `inherited_text_tower`)."""

    width: int
    heads: int
    layers: int
    quick_gelu: bool


class Student(nn.Module):
    """A compact two-tower retrieval model.

    Args:
        config: the recipe's `student` section.
        max_words: caption length in tokens (`data.max_words`).
        teacher_text: with `config.text` "teacher" or "inherit", the sizes of the text tower taken from the
            teacher (its weights are loaded after building).
    """

    PARTS = {  # distill.core.scorers.Retriever.PARTS
        "token_embedding": ("text.token_embedding.",),
        "text_tower": ("text.",),
        "frame_encoder": ("backbone.", "frame_proj."),
        "temporal_head": ("frame_position_embeddings", "temporal_transformer."),
    }

    def __init__(self, config: StudentConfig, *, max_words: int, teacher_text: TextTower | None = None):
        super().__init__()
        self.config, self.max_words, self.teacher_text = config, max_words, teacher_text
        dim = config.embed_dim
        towers = build_towers(config)
        self.backbone, width = towers.frame_encoder, towers.width
        # The clips arrive normalised with CLIP's mean and std; a tower trained with another normalisation
        # (MobileCLIP's: none) gets its own back through one affine map per channel.
        self.renormalise = towers.normalisation != (CLIP_MEAN, CLIP_STD)
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in towers.normalisation)
        clip_mean, clip_std = (torch.tensor(v).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
        self.register_buffer("input_scale", clip_std / std, persistent=False)
        self.register_buffer("input_shift", (clip_mean - mean) / std, persistent=False)
        self.frame_proj = nn.Linear(width, dim)
        if towers.text is not None and width == dim:  # an aligned tower's embeddings pass as they are at first
            nn.init.eye_(self.frame_proj.weight)
            nn.init.zeros_(self.frame_proj.bias)
        if config.temporal == "transformer":
            # N(0, 1), the scale of the frame features out of frame_proj and of the teacher's nn.Embedding:
            # much smaller positions do not train within a short distillation (docs/benchmarks-history.md).
            self.frame_position_embeddings = nn.Parameter(torch.randn(config.max_frames, dim))
            self.temporal_transformer = Transformer(dim, config.temporal_layers, max(1, dim // 32))
        if (config.text in ("teacher", "inherit")) != (teacher_text is not None):
            raise ValueError(
                f"student.text={config.text} needs teacher_text sizes exactly when it is 'teacher' or 'inherit' "
                "(students.model.teacher_text_tower and inherited_text_tower give them and the weights)"
            )
        if config.text == "open_clip":
            self.text = open_clip_text(config, towers)
        else:
            tower = teacher_text or TextTower(
                config.text_width, config.text_heads, config.text_layers, quick_gelu=False
            )
            self.text = TextTransformer(
                context_length=max_words,
                vocab_size=VOCAB_SIZE,
                width=tower.width,
                heads=tower.heads,
                layers=tower.layers,
                output_dim=dim,
                act_layer=QuickGELU if tower.quick_gelu else nn.GELU,
            ).requires_grad_(config.text != "teacher")  # the teacher's own tower ships frozen
        if config.token_rank:
            if config.text in ("teacher", "open_clip"):
                tower = "the teacher's text tower" if config.text == "teacher" else "an open_clip text tower"
                raise ValueError(f"student.token_rank: {tower} keeps its own embedding; set it to 0")
            self.text.token_embedding = factorised_embedding(VOCAB_SIZE, config.token_rank, self.text.width)
        scale = math.log(1 / 0.07) if towers.logit_scale_log is None else towers.logit_scale_log
        self.logit_scale_log = nn.Parameter(torch.tensor(scale))

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def input_size(self) -> int:
        """The side of the square frames the frame encoder reads."""
        return self.config.image_size

    def spec(self) -> dict:
        """Everything that rebuilds this model (`from_spec`), as JSON-ready values: stored in its export."""
        teacher_text = None if self.teacher_text is None else asdict(self.teacher_text)
        config = {k: v for k, v in asdict(self.config).items() if k != "init"}  # where it started: no part of it
        return {**config, "max_words": self.max_words, "teacher_text": teacher_text}

    @classmethod
    def from_spec(cls, spec: dict) -> Student:
        """The model of `spec()` (random weights), without its backbone's pretrained file, which the export's
        weights replace."""
        spec = dict(spec)
        max_words, teacher_text = spec.pop("max_words"), spec.pop("teacher_text", None)
        config = replace(StudentConfig(**spec), pretrained=None, init=None)
        return cls(config, max_words=max_words, teacher_text=teacher_text and TextTower(**teacher_text))

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The parameters loaded from `config.pretrained` (the backbone's, and an open_clip text tower's), which
        train at `coef_lr`."""
        if not self.config.pretrained:
            return []
        text = list(self.text.parameters()) if self.config.text == "open_clip" else []
        return list(self.backbone.parameters()) + text

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings `[N, D]`, L2-normalised (EOT token of a causal transformer; padding never seen)."""
        ids = pad_ids(input_ids, self.text.context_length)  # an open_clip tower reads its own length
        return F.normalize(self.text(ids).float(), dim=-1)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """Projected per-frame features `[B, T, D]` from `video [B, T, 3, H, W]` (padded frames too).

        The frames go to the backbone channels-last: on CPU, timm's convolutional families train 1.3x
        (EfficientViT-M) to 2.4x (MobileNetV3) faster that way and infer up to 1.26x faster, and a ViT,
        whose only convolution is its patch embedding, runs as fast (BENCHMARKS.md, bench_layout.py)."""
        frames = rearrange(video, "b t c h w -> (b t) c h w")
        if self.renormalise:
            frames = frames * self.input_scale + self.input_shift
        frames = frames.contiguous(memory_format=torch.channels_last)
        frames = self.backbone(frames)
        return rearrange(self.frame_proj(frames), "(b t) d -> b t d", b=video.shape[0])

    def pool_frames(self, x: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Video embeddings `[B, D]`, L2-normalised, from `frame_features`: temporal head, masked mean."""
        if self.config.temporal == "transformer":
            heads = self.temporal_transformer.resblocks[0].attn.num_heads
            positions = self.frame_position_embeddings[: x.shape[1]]
            x = x + self.temporal_transformer(x + positions, attn_mask=key_mask_bias(video_mask, heads, x.dtype))
        return F.normalize(masked_mean(x, video_mask).float(), dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Video embeddings `[B, D]`, L2-normalised, from `video [B, T, 3, H, W]` and `video_mask [B, T]`."""
        return self.pool_frames(self.frame_features(video), video_mask)

    def logit_scale(self) -> torch.Tensor:
        return self.logit_scale_log.clamp(max=math.log(100)).exp()

    def similarity_logits(self, input_ids, attention_mask, video, video_mask) -> torch.Tensor:
        """`logit_scale * text @ video.T`, `[N, B]` (text rows, video columns)."""
        text = self.encode_text(input_ids, attention_mask)
        return self.logit_scale() * text @ self.encode_video(video, video_mask).T

    def forward(self, input_ids, attention_mask, video, video_mask) -> dict[str, torch.Tensor]:
        return {
            "text_features": self.encode_text(input_ids, attention_mask),
            "video_features": self.encode_video(video, video_mask),
            "logit_scale": self.logit_scale(),
        }


def open_clip_text(config: StudentConfig, towers: Towers) -> TextTransformer:
    """The text tower of the open_clip model of `student.backbone` (`student.text: open_clip`), trained."""
    if towers.text is None:
        raise ValueError(
            f"student.text: open_clip takes the text tower of an open_clip:NAME backbone; {config.backbone} is "
            "timm's (use own, inherit or teacher)"
        )
    if towers.text.output_dim != config.embed_dim:
        raise ValueError(
            f"student.embed_dim: {config.embed_dim}, but the text tower of {config.backbone} embeds captions in "
            f"{towers.text.output_dim} dimensions; set student.embed_dim={towers.text.output_dim}"
        )
    return towers.text


def factorised_embedding(vocab: int, rank: int, width: int) -> nn.Sequential:
    """Token ids -> `[..., width]` through `vocab x rank` then `rank x width`, initialised so that the
    product has open_clip's token-embedding scale (std 0.02)."""
    embedding = nn.Sequential(nn.Embedding(vocab, rank), nn.Linear(rank, width, bias=False))
    nn.init.normal_(embedding[0].weight, std=0.02)
    nn.init.normal_(embedding[1].weight, std=rank**-0.5)
    return embedding


def check_student(config: StudentConfig, max_words: int) -> None:
    """Builds the student of `config` on the meta device (no memory; a pretrained file is read and held to the
    architecture, nothing copied), so a recipe whose student cannot be built, or whose pretrained file does not
    fit it, stops before any work, not after the data and the teacher stages.

    Raises:
        ValueError: names `student.backbone` (with the closest timm or open_clip names), `student.pretrained`
            and its file with the keys that do not fit, another `student.*` key, or the error building it.
    """
    check_backbone_name(config.backbone)
    text = "open_clip" if config.text == "open_clip" else "own"  # the teacher's sizes are checked with the teacher
    token_rank = 0 if config.text == "teacher" else config.token_rank
    try:
        # On the meta device a pretrained file is read and held to the architecture, but nothing is copied.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
            Student(replace(config, text=text, token_rank=token_rank), max_words=max_words)
    except Exception as error:  # timm and open_clip raise many kinds for arguments that do not fit
        if isinstance(error, ValueError) and str(error).startswith("student."):
            raise
        raise ValueError(
            f"student: {config.backbone} with backbone_kwargs {config.backbone_kwargs} cannot be built: "
            f"{type(error).__name__}: {error}"
        ) from None


def teacher_text_sizes(teacher: nn.Module, max_words: int) -> TextTower:
    """The sizes of a CLIP4Clip teacher's text tower (`teacher_text` of a `Student`), without its weights.

    Raises:
        ValueError: The teacher's text tower is not OpenAI CLIP's (`teacher.openai_text_tower`), as in some
            `open_clip:` models, or is shorter than `max_words`.
    """
    clip = teacher.clip
    if not teacher.openai_text_tower:
        raise ValueError(
            "student.text=teacher (or inherit) needs a teacher whose text tower is OpenAI CLIP's (a causal "
            "transformer read at the end token); this teacher's is not"
        )
    if max_words > teacher.context_length:
        raise ValueError(
            f"data.max_words: {max_words}, more than the teacher's text context "
            f"({teacher.context_length}), which student.text=teacher or inherit reads"
        )
    block = clip.transformer.resblocks[0]
    return TextTower(
        width=clip.transformer.width,
        heads=block.attn.num_heads,
        layers=len(clip.transformer.resblocks),
        quick_gelu=isinstance(block.mlp.gelu, QuickGELU),
    )


def teacher_text_tower(teacher: nn.Module, max_words: int) -> tuple[TextTower, dict[str, torch.Tensor]]:
    """The sizes (`teacher_text_sizes`) and the weights (for `student.text`) of a CLIP4Clip teacher's text
    tower, cut to `max_words` positions as the teacher runs it: a student with them embeds every caption
    exactly as the teacher does. Raises `teacher_text_sizes`'s ValueError."""
    sizes, clip = teacher_text_sizes(teacher, max_words), teacher.clip
    weights = {
        "token_embedding.weight": clip.token_embedding.weight,
        "positional_embedding": clip.positional_embedding[:max_words],
        "text_projection": clip.text_projection,
        **{f"transformer.{k}": v for k, v in clip.transformer.state_dict().items()},
        **{f"ln_final.{k}": v for k, v in clip.ln_final.state_dict().items()},
    }
    return sizes, {k: v.detach().clone() for k, v in weights.items()}


def check_inheritance(config: StudentConfig, sizes: TextTower) -> None:
    """Raises ValueError naming `student.text_width`/`text_heads` unlike the teacher tower's `sizes`,
    `student.token_rank` above its width, or `student.text_layers` outside 1 to its layers."""
    if (config.text_width, config.text_heads) != (sizes.width, sizes.heads):
        raise ValueError(
            f"student.text_width, text_heads: {config.text_width}, {config.text_heads}, but student.text=inherit "
            f"takes the teacher's layers, {sizes.width} wide with {sizes.heads} heads; set those"
        )
    if config.token_rank > sizes.width:
        raise ValueError(f"student.token_rank: {config.token_rank}, more than the text width {sizes.width}")
    if not 1 <= config.text_layers <= sizes.layers:
        raise ValueError(
            f"student.text_layers: {config.text_layers}; student.text=inherit takes 1 to the teacher's "
            f"{sizes.layers} layers"
        )


def inherited_text_tower(
    teacher: nn.Module, config: StudentConfig, max_words: int
) -> tuple[TextTower, dict[str, torch.Tensor]]:
    """The sizes and the weights of a text tower inherited from the teacher's (`student.text=inherit`;
    TinyCLIP's manual weight inheritance): `config.text_layers` of the teacher's layers, evenly spaced (the
    first, and the last when there are two or more), its token and position embeddings and final norm, and
    its text projection when `config.embed_dim` is the teacher's (else the student's own projection stays).
    With `config.token_rank` r, the token embedding is its best rank-r factorisation (a truncated SVD:
    `embedding.0` is U_r S_r, `embedding.1` maps r to the width by V_r).

    Raises:
        ValueError: `check_inheritance`'s, or the teacher's tower's (`teacher_text_tower`).
    """
    sizes, weights = teacher_text_tower(teacher, max_words)
    check_inheritance(config, sizes)
    n, k = sizes.layers, config.text_layers
    kept = [round(i * (n - 1) / (k - 1)) for i in range(k)] if k > 1 else [0]
    inherited = {key: value for key, value in weights.items() if not key.startswith("transformer.")}
    for i, layer in enumerate(kept):
        old = f"transformer.resblocks.{layer}."
        new = f"transformer.resblocks.{i}."
        inherited |= {new + key[len(old) :]: v for key, v in weights.items() if key.startswith(old)}
    if config.embed_dim != teacher.embed_dim:
        del inherited["text_projection"]  # into another space: the student's own, learned
    if config.token_rank:
        u, s, vh = torch.linalg.svd(inherited.pop("token_embedding.weight").float(), full_matrices=False)
        r = config.token_rank
        inherited["token_embedding.0.weight"] = u[:, :r] * s[:r]
        inherited["token_embedding.1.weight"] = vh[:r].T.contiguous()  # nn.Linear(r, width) holds [width, r]
    return replace(sizes, layers=k), inherited


def preprocessing_of(model: nn.Module) -> Preprocessing:
    """A loaded student's from its export (`load_student` attaches it); a student built here from its
    config; a teacher's from its input size and CLIP4Clip's evaluation defaults (12 frames at 1 fps,
    uniform slicing, 32 tokens)."""
    found = getattr(model, "preprocessing", None)
    if found is not None:
        return found
    if isinstance(model, Student):
        return Preprocessing(max_frames=model.config.max_frames, image_size=model.input_size, max_words=model.max_words)
    return Preprocessing(max_frames=12, image_size=model.input_size, max_words=min(32, model.context_length))
