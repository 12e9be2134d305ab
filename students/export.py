"""The student's shipping format: one self-describing .safetensors file."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from students.model import Student

FORMAT = "clip4clip-distill/student"


def export_student(student: Student, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Writes float32 weights with `{"format", "config"}` and `metadata` (strings, e.g. JSON) in the header.

    The file is written under a temporary name and renamed, so a crash never leaves a half-written export.
    """
    path = Path(path)
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in student.state_dict().items()}
    header = {"format": FORMAT, "config": json.dumps(student.config), **(metadata or {})}
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=header)
    partial.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of an export, without loading the weights."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a clip4clip-distill student export (metadata format "
                         f"{metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata


def load_student(path: str | Path, device: str | torch.device = "cpu") -> Student:
    """Rebuilds a student from one exported file alone, in eval mode."""
    # The weights come from the export, not from the backbone's pretrained file (which may not be here).
    student = Student({**json.loads(read_metadata(path)["config"]), "pretrained": None})
    student.load_state_dict(load_file(str(path)))  # strict: a missing or extra key is an error naming it
    return student.to(device).eval()
