"""CLIP4Clip teachers: the model, loading, and the CLIP4Clip tokenizer."""
from __future__ import annotations

from pathlib import Path

import torch

from teachers.clip4clip import CLIP4Clip
from teachers.export import is_teacher_export, load_teacher_export, save_teacher
from teachers.tokenizer import tokenize

__all__ = ["CLIP4Clip", "load_teacher", "save_teacher", "tokenize"]


def load_teacher(source: str | Path, device: str | torch.device = "cpu") -> CLIP4Clip:
    """Loads a frozen teacher in eval mode with float32 parameters.

    Supported now: the toolkit's own `.safetensors` teacher exports (`save_teacher`). Original CLIP4Clip
    checkpoints, OpenAI CLIP files and `open_clip:<MODEL>` sources are not loadable yet.
    """
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"teacher source {source}: no such file")
    if path.suffix != ".safetensors" or not is_teacher_export(path):
        raise ValueError(f"teacher source {source}: not a clip4clip-distill teacher export (.safetensors "
                         "written by the teacher stage); other checkpoint formats are not supported yet")
    teacher = load_teacher_export(path).float().to(device).eval()
    teacher.requires_grad_(False)
    return teacher
