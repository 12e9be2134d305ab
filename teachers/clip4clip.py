"""CLIP4Clip over an open_clip CLIP backbone: per-frame CLIP features, then one of four similarity heads.

Loose heads (meanP, seqLSTM, seqTransf) are two towers: a temporal head on the frame features, a masked
mean, and a scaled cosine. The tight head (tightTransf) is a cross encoder that scores every (text, video)
pair jointly and has no embeddings. Parameter names follow the original checkpoints (`clip.*`,
`frame_position_embeddings.*`, `transformerClip.*`, `lstm_visual.*`, `cross.*`, `similarity_dense.*`), so
the state dict lines up with `pytorch_model.bin.N` files.
"""

from __future__ import annotations

import contextlib
import math
from functools import partial, wraps
from typing import Literal

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from open_clip.transformer import LayerNorm, QuickGELU, Transformer, text_global_pool
from torch import nn

from teachers.tokenizer import pad_ids

SIM_HEADERS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
CROSS_HEADS = 8  # num_attention_heads of CLIP4Clip's cross-base config; no checkpoint stores it


def build_clip(arch: dict) -> nn.Module:
    """An open_clip CLIP for `arch`: `open_clip.create_model(arch["open_clip_model"])` (random weights) for
    open_clip sources, else `open_clip.CLIP` with QuickGELU, as OpenAI's, from `embed_dim`/`vision_cfg`/`text_cfg`."""
    if "open_clip_model" in arch:
        return open_clip.create_model(arch["open_clip_model"], pretrained_text=False)
    return open_clip.CLIP(arch["embed_dim"], arch["vision_cfg"], arch["text_cfg"], quick_gelu=True)


def cross_blocks(width: int, layers: int, heads: int) -> Transformer:
    """CLIP residual blocks as CLIP4Clip's module_cross builds them: QuickGELU, BERT LayerNorm (eps 1e-12),
    no final LayerNorm."""
    return Transformer(width, layers, heads, act_layer=QuickGELU, norm_layer=partial(LayerNorm, eps=1e-12))


def key_mask_bias(mask: torch.Tensor, heads: int, dtype: torch.dtype) -> torch.Tensor:
    """CLIP4Clip's additive key mask `(1 - m) * -1e6` from `mask [B, S]`, the same for every query and head:
    `[(B heads), S, S]`, batch-major as `repeat_interleave` over heads makes it."""
    bias = (1.0 - mask.to(dtype)) * -1e6
    return repeat(bias, "b k -> (b heads) q k", heads=heads, q=mask.shape[1])


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x [B, T, D]` over the frames where `mask [B, T]` is 1; a video without frames gives 0."""
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


class CrossEncoder(nn.Module):
    """CLIP4Clip's CrossModel (`cross.*`): position embeddings, CLIP blocks, and a pooler on token 0.

    No token-type embedding and no LayerNorm on the input, as in the original; its embedding dropout is
    left out because a teacher is frozen.
    """

    def __init__(self, width: int, layers: int, positions: int):
        super().__init__()
        if width % CROSS_HEADS:
            raise ValueError(f"tightTransf: width {width} is not divisible by the cross encoder's {CROSS_HEADS} heads")
        self.embeddings = nn.ModuleDict({"position_embeddings": nn.Embedding(positions, width)})
        self.transformer = cross_blocks(width, layers, CROSS_HEADS)
        self.pooler = nn.ModuleDict({"ln_pool": LayerNorm(width, eps=1e-12), "dense": nn.Linear(width, width)})
        self.activation = QuickGELU()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Pooled output `[P, D]` for sequences `x [P, S, D]` with key mask `[P, S]` (1 = attend)."""
        positions = self.embeddings["position_embeddings"].weight
        if x.shape[1] > positions.shape[0]:
            raise ValueError(
                f"tightTransf: a text token and {x.shape[1] - 1} frames need {x.shape[1]} positions, "
                f"the cross encoder has {positions.shape[0]}"
            )
        x = self.transformer(x + positions[: x.shape[1]], attn_mask=key_mask_bias(mask, CROSS_HEADS, x.dtype))
        return self.activation(self.pooler["dense"](self.pooler["ln_pool"](x)[:, 0]))


def lstm_needs_fp32(x: torch.Tensor) -> bool:
    """CPU bf16 autocast runs an LSTM through oneDNN's bf16 primitive, which CPUs without native bf16
    (AVX2-only ones) lack: there the LSTM on `x` leaves autocast and runs in float32 instead of failing."""
    return (
        x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


Precision = Literal["bf16", "fp32"]


def in_precision(method):
    """Runs a feature method under the model's `precision`: bf16 autocast, or float32 even inside an outer
    autocast (e.g. the student's mixed precision); floating outputs are float32 either way. A model with
    `precision` None (one in training) computes as its caller's autocast says."""

    @wraps(method)
    def run(self, *args, **kwargs):
        if self.precision is None:
            return method(self, *args, **kwargs)
        with torch.autocast(self.clip.logit_scale.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return method(self, *args, **kwargs).float()

    return run


class CLIP4Clip(nn.Module):
    """A CLIP4Clip retrieval model.

    Args:
        arch: `{"embed_dim", "vision_cfg", "text_cfg"}` for `build_clip` (or `open_clip_model`), plus
            `sim_header`, `cross_layers` (depth of the seqTransf/tightTransf transformer) and optionally
            `linear_patch` ("2d", the default, or "3d"). Stored in exports to rebuild the model.
        clip: an already built backbone for `arch` (open_clip sources load their weights while building it).
    """

    PARTS = {  # distill.core.scorers.Retriever.PARTS
        "token_embedding": ("clip.token_embedding.",),
        "text_tower": ("clip.transformer.", "clip.ln_final.", "clip.text_projection", "clip.positional_embedding"),
        "frame_encoder": ("clip.visual.",),
        "temporal_head": ("frame_position_embeddings.", "lstm_visual.", "transformerClip.", "cross.", "similarity_"),
    }

    def __init__(self, arch: dict, *, clip: nn.Module | None = None):
        super().__init__()
        if arch["sim_header"] not in SIM_HEADERS:
            raise ValueError(f"sim_header {arch['sim_header']!r} is not one of {SIM_HEADERS}")
        self.arch = arch
        self.sim_header = arch["sim_header"]
        self.precision: Precision | None = None  # how a frozen teacher computes: see `in_precision`
        self.fine_tuning = False  # True while the teacher stage fine-tunes a loaded teacher (`teacher.init`)
        self.linear_patch = arch.get("linear_patch", "2d")
        self.clip = clip if clip is not None else build_clip(arch)
        width = arch["embed_dim"]
        # CLIP4Clip sizes its frame and cross positions like the text positions (77 for OpenAI CLIP).
        positions = arch["text_cfg"].get("context_length", 77)
        if self.linear_patch == "3d":
            # The original's Conv3d patch embedding over (3 frames, p, p); `conv1` stays in the state dict, unused.
            v = arch["vision_cfg"]
            self.clip.visual.conv2 = nn.Conv3d(
                3,
                v["width"],
                (3, v["patch_size"], v["patch_size"]),
                stride=(1, v["patch_size"], v["patch_size"]),
                padding=(1, 0, 0),
                bias=False,
            )
        if self.sim_header in ("seqLSTM", "seqTransf"):
            self.frame_position_embeddings = nn.Embedding(positions, width)
        if self.sim_header == "seqLSTM":
            self.lstm_visual = nn.LSTM(width, width, num_layers=1, batch_first=True)
        if self.sim_header == "seqTransf":
            self.transformerClip = cross_blocks(width, arch["cross_layers"], max(1, width // 64))
        if self.sim_header == "tightTransf":
            self.cross = CrossEncoder(width, arch["cross_layers"], positions)
            self.similarity_dense = nn.Linear(width, 1)
        for parameter in self.unused_parameters():
            parameter.requires_grad_(False)

    def unused_parameters(self) -> list[nn.Parameter]:
        """Parameters no output reads, kept frozen in training because DDP refuses a parameter without a
        gradient: CLIP's logit scale under tightTransf (the cross encoder's scores are raw), the 2d patch
        embedding `conv1` of a 3d-linear-patch model (kept in the state dict, unused)."""
        unused = [self.clip.logit_scale] if self.sim_header == "tightTransf" else []
        return unused + (list(self.clip.visual.conv1.parameters()) if self.linear_patch == "3d" else [])

    def trainable(self) -> CLIP4Clip:
        """This model in training mode with every used parameter trainable (`teacher.init`), in place."""
        self.requires_grad_(True).train()
        for parameter in self.unused_parameters():
            parameter.requires_grad_(False)
        return self

    def pretrained_parameters(self) -> list[nn.Parameter]:
        """The CLIP weights of a teacher being fine-tuned, which train at `coef_lr` under the heads as in
        CLIP4Clip (`distill.training.train.param_groups`); none for one trained from random weights."""
        return list(self.clip.parameters()) if self.fine_tuning else []

    @property
    def embed_dim(self) -> int:
        return self.arch["embed_dim"]

    @property
    def input_size(self) -> int:
        """The side of the square frames the vision tower reads."""
        return self.arch["vision_cfg"]["image_size"]

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    @property
    def openai_text_tower(self) -> bool:
        """The text tower is OpenAI CLIP's (a causal transformer read at the EOT token, projected by a
        matrix): it can run at any length up to the context, which `text_features` and a student's
        `text=teacher` rely on. Some open_clip models' towers are not."""
        clip = self.clip
        return (
            isinstance(clip, open_clip.CLIP)
            and clip.attn_mask is not None
            and clip.text_pool_type == "argmax"
            and isinstance(clip.text_projection, nn.Parameter)
        )

    @property
    def is_tight(self) -> bool:
        """True for the cross-encoder head: scores come from `similarity_logits` only, there are no embeddings."""
        return self.sim_header == "tightTransf"

    def _require_loose(self, name: str) -> None:
        if self.is_tight:
            raise RuntimeError(
                f"{name}: a tightTransf teacher has no text or video embeddings; use "
                "similarity_logits (or text_features + frame_features + cross_scores)"
            )

    # ------------------------------------------------------------ features shared by every head

    @in_precision
    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features `[N, D]`: the EOT row (largest id) after the causal transformer.

        There is no attention mask, as in CLIP4Clip: the causal mask already hides the padding. Like the
        original, the tower runs at the ids' length (max_words) with the first position embeddings and the
        causal mask cut to it: the EOT row never sees what follows it, so this equals open_clip's
        `encode_text` on ids padded to the context length, at a fraction of the cost (32 of OpenAI's 77
        tokens: 2.4x fewer FLOPs). Towers with another mask or pooling (some open_clip models) are padded.
        """
        clip, n = self.clip, input_ids.shape[1]
        if not self.openai_text_tower or n > self.context_length:  # pad_ids names an over-long input
            return clip.encode_text(pad_ids(input_ids, self.context_length)).float()
        dtype = clip.transformer.get_cast_dtype()
        x = clip.token_embedding(input_ids).to(dtype) + clip.positional_embedding[:n].to(dtype)
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:n, :n]))
        return (text_global_pool(x, input_ids, "argmax") @ clip.text_projection).float()

    @in_precision
    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """Unnormalised per-frame CLIP features `[B, T, D]` (CLS token after ln_post and proj) from a video
        `[B, T, 3, H, W]`. Padded frames are encoded too; the heads mask them."""
        if self.linear_patch == "3d":
            return self._frame_features_3d(video)
        frames = rearrange(video, "b t c h w -> (b t) c h w")
        return rearrange(self.clip.encode_image(frames).float(), "(b t) d -> b t d", b=video.shape[0])

    def _frame_features_3d(self, video: torch.Tensor) -> torch.Tensor:
        # open_clip's ViT has no temporal patch embedding, so the tower runs here on the Conv3d tokens.
        # The kernel spans neighbouring frames: padded frames leak into valid ones, as in the original.
        visual = self.clip.visual
        x = visual.conv2(rearrange(video, "b t c h w -> b c t h w"))
        x = rearrange(x, "b w t gh gw -> (b t) (gh gw) w")
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype))
        x = visual.ln_post(visual.transformer(x)[:, 0]) @ visual.proj
        return rearrange(x.float(), "(b t) d -> b t d", b=video.shape[0])

    # ------------------------------------------------------------ loose heads

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings `[N, D]`, L2-normalised; the attention mask has no effect, as in CLIP4Clip."""
        self._require_loose("encode_text")
        return F.normalize(self.text_features(input_ids), dim=-1)

    def temporal(self, x: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """The loose similarity head on frame features `[B, T, D]`; keeps the shape."""
        if self.sim_header == "seqLSTM":
            # Valid frames are a prefix, so running the LSTM on the padded sequence equals the packed run.
            with torch.autocast("cpu", enabled=False) if lstm_needs_fp32(x) else contextlib.nullcontext():
                out, _ = self.lstm_visual(x)
            return out + x
        if self.sim_header == "seqTransf":
            heads = self.transformerClip.resblocks[0].attn.num_heads
            h = x + self.frame_position_embeddings.weight[: x.shape[1]]
            return self.transformerClip(h, attn_mask=key_mask_bias(video_mask, heads, x.dtype)) + x
        return x

    @in_precision
    def pool_frames(self, frames: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Video embeddings `[B, D]`, L2-normalised, from `frame_features`: head, per-frame L2, masked mean,
        L2 again."""
        self._require_loose("pool_frames")
        x = F.normalize(self.temporal(frames, video_mask), dim=-1)
        return F.normalize(masked_mean(x, video_mask), dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Video embeddings `[B, D]`, L2-normalised, from `video [B, T, 3, H, W]` and `video_mask [B, T]`."""
        return self.pool_frames(self.frame_features(video), video_mask)

    def logit_scale(self) -> torch.Tensor:
        # CLIP4Clip clamps the parameter to ln(100) after every step; clamping here is the same at eval.
        return self.clip.logit_scale.clamp(max=math.log(100)).exp()

    # ------------------------------------------------------------ tight head

    @in_precision
    def cross_scores(
        self, text: torch.Tensor, frames: torch.Tensor, video_mask: torch.Tensor, *, chunk_pairs: int = 4096
    ) -> torch.Tensor:
        """tightTransf scores `[N, B]` from `text_features [N, D]` and `frame_features [B, T, D]`.

        Each pair (i, j) is the sequence `[text_i; frames_j]` with key mask `[1; video_mask_j]`, pooled at the
        text token and scored by `similarity_dense`: raw scores, no logit scale. At most `chunk_pairs` pairs
        go through the cross encoder at once, so memory does not grow with N * B.
        """
        if not self.is_tight:
            raise RuntimeError(f"cross_scores: a {self.sim_header} teacher has no cross encoder")
        n, b = text.shape[0], frames.shape[0]
        valid = torch.cat([torch.ones(b, 1, device=video_mask.device), video_mask.float()], dim=1)  # [B, 1+T]
        scores = []
        for start in range(0, n * b, chunk_pairs):
            pair = torch.arange(start, min(start + chunk_pairs, n * b), device=frames.device)
            i, j = pair // b, pair % b
            seq = torch.cat([text[i, None], frames[j]], dim=1)  # [P, 1+T, D]
            scores.append(self.similarity_dense(self.cross(seq, valid[j])).squeeze(-1))
        return torch.cat(scores).view(n, b)

    # ------------------------------------------------------------ the shared face

    @in_precision
    def similarity_logits(
        self, input_ids, attention_mask, video, video_mask, *, chunk_pairs: int = 4096
    ) -> torch.Tensor:
        """`[N, B]` (text rows, video columns): `logit_scale * text @ video.T` for the loose heads, the cross
        encoder's raw scores for tightTransf (`chunk_pairs`: see `cross_scores`)."""
        if self.is_tight:
            return self.cross_scores(
                self.text_features(input_ids), self.frame_features(video), video_mask, chunk_pairs=chunk_pairs
            )
        text = self.encode_text(input_ids, attention_mask)
        return self.logit_scale() * text @ self.encode_video(video, video_mask).T

    def forward(self, input_ids, attention_mask, video, video_mask) -> dict[str, torch.Tensor]:
        """The outputs of a batch of pairs. Loose heads: `{"text_features", "video_features", "logit_scale"}`
        (embeddings); tightTransf: `{"text_features", "frame_features", "video_mask"}`, the cross encoder's
        inputs, which `cross_scores` scores for every caption against every video (of the global batch, in
        training)."""
        if self.is_tight:
            return {
                "text_features": self.text_features(input_ids),
                "frame_features": self.frame_features(video),
                "video_mask": video_mask,
            }
        return {
            "text_features": self.encode_text(input_ids, attention_mask),
            "video_features": self.encode_video(video, video_mask),
            "logit_scale": self.logit_scale(),
        }
