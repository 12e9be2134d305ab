"""CLIP4Clip teachers: the model, loading every supported source, and the CLIP4Clip tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from teachers.checkpoint import load_checkpoint, save_original_checkpoint
from teachers.clip4clip import CLIP4Clip
from teachers.export import is_teacher_export, load_teacher_export, save_teacher
from teachers.open_clip_source import PREFIX as OPEN_CLIP_PREFIX
from teachers.open_clip_source import load_open_clip_teacher, parse_open_clip_source
from teachers.tokenizer import tokenize

__all__ = [
    "CLIP4Clip",
    "load_teacher",
    "parse_open_clip_source",
    "save_original_checkpoint",
    "save_teacher",
    "tokenize",
]


def load_teacher(
    source: str | Path, device: str | torch.device = "cpu", precision: Literal["auto", "bf16", "fp32"] = "auto"
) -> CLIP4Clip:
    """Loads a frozen teacher in eval mode with float32 parameters (fp16 checkpoints are computed in float32).

    `precision`: how it computes; auto is bf16 autocast on CUDA (twice the speed of float32 there, and
    half the activation memory) and float32 elsewhere (the original's numbers exactly: bf16 keeps about 3
    significant digits).

    `source` is one of:
    - our own teacher export, `.safetensors` written by `save_teacher` (the metadata carries the arch);
    - an original CLIP4Clip checkpoint (`pytorch_model.bin.N`), any head, 2d or 3d linear patch;
    - an OpenAI CLIP ViT state dict or TorchScript `.pt` file: a zero-shot meanP teacher;
    - `open_clip:<MODEL>?pretrained=<local file>`: a zero-shot meanP teacher.
    Architectures come from tensor shapes and heads from key names; any missing, unexpected or mis-shaped
    key is one error that lists them.
    """
    if str(source).startswith(OPEN_CLIP_PREFIX):
        teacher = load_open_clip_teacher(str(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"teacher source {source}: no such file")
        teacher = load_teacher_export(path) if is_teacher_export(path) else load_checkpoint(path)
    teacher = teacher.float().to(device).eval()
    teacher.requires_grad_(False)
    if precision == "auto":
        precision = "bf16" if torch.device(device).type == "cuda" else "fp32"
    teacher.precision = precision
    return teacher
