"""CLIP4Clip over an open_clip CLIP backbone: per-frame CLIP features, a temporal head, a masked mean.

Parameter names follow the original checkpoints (`clip.*`, `frame_position_embeddings.*`,
`transformerClip.*`, `lstm_visual.*`), so the state dict lines up with `pytorch_model.bin.N` files.
"""
from __future__ import annotations

import math
from functools import partial

import open_clip
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn

from teachers.tokenizer import pad_ids

SIM_HEADERS = ("meanP", "seqLSTM", "seqTransf")


def build_clip(arch: dict) -> open_clip.CLIP:
    """Builds an open_clip CLIP (QuickGELU, as OpenAI's) from `{"embed_dim", "vision_cfg", "text_cfg"}`."""
    return open_clip.CLIP(arch["embed_dim"], arch["vision_cfg"], arch["text_cfg"], quick_gelu=True)


class CLIP4Clip(nn.Module):
    """A CLIP4Clip retrieval model with a loose (two-tower) similarity head.

    Args:
        arch: `{"embed_dim", "vision_cfg", "text_cfg"}` for `build_clip`, plus `sim_header` and
            `cross_layers` (temporal transformer depth for seqTransf). Stored in exports to rebuild the model.
    """

    def __init__(self, arch: dict):
        super().__init__()
        if arch["sim_header"] not in SIM_HEADERS:
            raise ValueError(f"sim_header {arch['sim_header']!r} is not one of {SIM_HEADERS}")
        self.arch = arch
        self.sim_header = arch["sim_header"]
        self.clip = build_clip(arch)
        width = arch["embed_dim"]
        # CLIP4Clip sizes its frame positions like the text positions (77 for OpenAI CLIP).
        positions = arch["text_cfg"].get("context_length", 77)
        if self.sim_header in ("seqLSTM", "seqTransf"):
            self.frame_position_embeddings = nn.Embedding(positions, width)
        if self.sim_header == "seqLSTM":
            self.lstm_visual = nn.LSTM(width, width, num_layers=1, batch_first=True)
        if self.sim_header == "seqTransf":
            # CLIP blocks with BERT's LayerNorm epsilon, as CLIP4Clip's module_cross.
            self.transformerClip = Transformer(
                width, arch["cross_layers"], max(1, width // 64), act_layer=QuickGELU,
                norm_layer=partial(LayerNorm, eps=1e-12))

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings `[N, D]`, L2-normalised: the EOT row (largest id) after the causal transformer.

        The attention mask has no effect, as in CLIP4Clip: the causal mask already hides the padding.
        """
        ids = pad_ids(input_ids, self.context_length)
        return F.normalize(self.clip.encode_text(ids).float(), dim=-1)

    def frame_features(self, video: torch.Tensor) -> torch.Tensor:
        """Unnormalised per-frame CLIP features `[B, T, D]` from a video `[B, T, 3, H, W]`."""
        frames = rearrange(video, "b t c h w -> (b t) c h w")
        return rearrange(self.clip.encode_image(frames).float(), "(b t) d -> b t d", b=video.shape[0])

    def temporal(self, x: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """The similarity head on frame features `[B, T, D]`; keeps the shape."""
        if self.sim_header == "seqLSTM":
            # Valid frames are a prefix, so running the LSTM on the padded sequence equals the packed run.
            out, _ = self.lstm_visual(x)
            return out + x
        if self.sim_header == "seqTransf":
            t = x.shape[1]
            heads = self.transformerClip.resblocks[0].attn.num_heads
            h = x + self.frame_position_embeddings.weight[:t]
            key_mask = (1.0 - video_mask.to(x.dtype)) * -1e6  # [B, T], the same for every query
            attn_mask = repeat(key_mask, "b k -> (b heads) q k", heads=heads, q=t)
            return self.transformerClip(h, attn_mask=attn_mask) + x
        return x

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """Video embeddings `[B, D]`, L2-normalised: head, per-frame L2, masked mean, L2 again."""
        x = F.normalize(self.temporal(self.frame_features(video), video_mask), dim=-1)
        m = video_mask.to(x.dtype).unsqueeze(-1)
        x = (x * m).sum(1) / m.sum(1).clamp(min=1.0)
        return F.normalize(x, dim=-1)

    def logit_scale(self) -> torch.Tensor:
        # CLIP4Clip clamps the parameter to ln(100) after every step; clamping here is the same at eval.
        return self.clip.logit_scale.clamp(max=math.log(100)).exp()

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
