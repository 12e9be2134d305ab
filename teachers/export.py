"""Our own teacher format: one .safetensors file whose metadata carries the architecture."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from distill.core.files import atomic_write
from teachers.checkpoint import load_strict
from teachers.clip4clip import CLIP4Clip

FORMAT = "clip4clip-distill/teacher"


def save_teacher(teacher: CLIP4Clip, path: str | Path, **extra: str) -> None:
    """Writes the float32 weights and `{"format", "arch"}` (plus `extra` strings) as metadata, under a
    temporary name and renamed."""
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in teacher.state_dict().items()}
    metadata = {"format": FORMAT, "arch": json.dumps(teacher.arch), **extra}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def is_teacher_export(path: str | Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except SafetensorError:  # not a safetensors file at all; the caller's error names the path
        return False


def training_recipe(path: str | Path) -> dict | None:
    """The recipe that trained a teacher of this toolkit (`save_teacher(..., recipe=...)`), or None for any
    other source (`open_clip:` names, CLIP4Clip or CLIP checkpoints, exports written without one): how the
    teacher reads clips is part of the teacher (`distill.retrieval.encoders.teacher_preprocessing`,
    `distill.context.check_frames`)."""
    if not Path(path).is_file() or not is_teacher_export(path):
        return None
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("recipe", "null"))


def load_teacher_export(path: str | Path) -> CLIP4Clip:
    """Rebuilds a teacher written by `save_teacher`; a key or shape mismatch is an error that lists them."""
    with safe_open(str(path), framework="pt") as f:
        arch = json.loads(f.metadata()["arch"])
    teacher = CLIP4Clip(arch)
    load_strict(teacher, load_file(str(path)), path)
    return teacher


def teacher_sha256(teacher: nn.Module) -> str:
    """Hash of the architecture and every weight: the same teacher gives the same hash whatever its file."""
    h = hashlib.sha256(json.dumps(teacher.arch, sort_keys=True).encode())
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(f"{name} {tensor.dtype} {list(tensor.shape)}".encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
