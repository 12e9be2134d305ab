"""The student's shipping format: one self-describing .safetensors file."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from distill.files import atomic_write
from students.model import Preprocessing, Student

FORMAT = "clip4clip-distill/student"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def shipped(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A floating tensor as an export of `dtype` stores it (integer buffers as they are)."""
    return tensor.detach().to(dtype) if tensor.is_floating_point() else tensor.detach()


@torch.no_grad()
def round_weights(student: Student, dtype: str) -> None:
    """Rounds the student's float parameters and buffers to `dtype` ("fp32", "fp16", "bf16") in place,
    keeping them float32: the model then computes what `load_student` rebuilds from an export of that dtype.

    Raises:
        ValueError: A value is finite in float32 but not in `dtype` (fp16 ends at 65504), naming the tensor.
    """
    for name, tensor in student.state_dict().items():
        if tensor.is_floating_point():
            rounded = shipped(tensor, DTYPES[dtype])
            if not torch.isfinite(rounded).all() and torch.isfinite(tensor).all():
                raise ValueError(
                    f"export.dtype={dtype}: {name} overflows it (largest magnitude "
                    f"{tensor.abs().max().item():.4g}); use fp32 or bf16"
                )
            tensor.copy_(rounded)


def export_student(
    student: Student, path: str | Path, metadata: dict[str, str] | None = None, dtype: str = "fp32"
) -> Path:
    """Writes the weights as `dtype` ("fp32", "fp16", "bf16"; round them first with `round_weights`) with
    `{"format", "config"}` and `metadata` (strings, e.g. JSON) in the header.

    The file is written under a temporary name and renamed, so a crash never leaves a half-written export.
    """
    tensors = {k: shipped(v, DTYPES[dtype]).contiguous().cpu() for k, v in student.state_dict().items()}
    header = {"format": FORMAT, "config": json.dumps(student.spec()), **(metadata or {})}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The header metadata of an export, without loading the weights."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except SafetensorError as error:
        raise ValueError(f"{path}: not a safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a clip4clip-distill student export (metadata format "
            f"{metadata.get('format')!r}, expected {FORMAT!r})"
        )
    return metadata


def load_student(path: str | Path, device: str | torch.device = "cpu") -> Student:
    """Rebuilds a student from one exported file alone (or the model card folder holding it), in eval mode,
    with the `preprocessing` it was trained to read (`distill.embed` uses it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    metadata = read_metadata(path)
    # The weights come from the export, not from the backbone's pretrained file (which may not be here).
    student = Student.from_spec(json.loads(metadata["config"]))
    # strict: a missing or extra key is an error naming it; fp16/bf16 weights are cast to float32
    student.load_state_dict(load_file(str(path)))
    if "preprocessing" in metadata:
        fields = {f.name for f in dataclasses.fields(Preprocessing)}
        found = json.loads(metadata["preprocessing"])
        student.preprocessing = Preprocessing(**{k: v for k, v in found.items() if k in fields})
    return student.to(device).eval()
