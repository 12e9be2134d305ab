"""Our own teacher format: one .safetensors file whose metadata carries the architecture."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from teachers.clip4clip import CLIP4Clip

FORMAT = "clip4clip-distill/teacher"


def save_teacher(teacher: CLIP4Clip, path: str | Path, **extra: str) -> None:
    """Writes the float32 weights and `{"format", "arch"}` (plus `extra` strings) as metadata."""
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in teacher.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": FORMAT, "arch": json.dumps(teacher.arch), **extra})


def is_teacher_export(path: str | Path) -> bool:
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except SafetensorError:  # not a safetensors file at all; the caller's error names the path
        return False


def load_teacher_export(path: str | Path) -> CLIP4Clip:
    """Rebuilds a teacher written by `save_teacher`; a key or shape mismatch is an error that lists them."""
    with safe_open(str(path), framework="pt") as f:
        arch = json.loads(f.metadata()["arch"])
    teacher = CLIP4Clip(arch)
    state = load_file(str(path))
    expected = teacher.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mis_shaped = sorted(k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        raise ValueError(f"{path}: does not match its architecture: missing {missing}, "
                         f"unexpected {unexpected}, mis-shaped {mis_shaped}")
    teacher.load_state_dict(state)
    return teacher
