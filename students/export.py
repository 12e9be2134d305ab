"""The student's shipping format: one self-describing .safetensors file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from distill.core.config import RecipeError, build_dataclass
from distill.core.files import atomic_write
from distill.core.schema import StudentConfig
from students.model import Preprocessing, Student, TextTower

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


# timm arguments that read a file or the network when the backbone is built: an export brings its weights.
FILE_ARGUMENTS = ("checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir")


def weights_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors in name order: each name, dtype, shape and bytes (as stored)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def export_student(
    student: Student, path: str | Path, metadata: dict[str, str] | None = None, dtype: str = "fp32"
) -> Path:
    """Writes the weights as `dtype` ("fp32", "fp16", "bf16"; round them first with `round_weights`) with
    `{"format", "config", "weights_sha256"}` and `metadata` (strings, e.g. JSON) in the header.

    The file is written under a temporary name and renamed, so a crash never leaves a half-written export.
    """
    tensors = {k: shipped(v, DTYPES[dtype]).contiguous().cpu() for k, v in student.state_dict().items()}
    header = {"format": FORMAT, "config": json.dumps(student.spec()), "weights_sha256": weights_sha256(tensors)}
    header |= metadata or {}
    return atomic_write(path, lambda p: save_file(tensors, str(p), metadata=header))


def export_file(path: str | Path) -> Path:
    """The student export a path names: the file itself, or the `model.safetensors` of a model card folder."""
    path = Path(path)
    return path / "model.safetensors" if path.is_dir() else path


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
    with the `preprocessing` it was trained to read (`distill.retrieval.embed` uses it).

    Raises:
        ValueError: naming the file: not a student export, a config that does not fit the student schema
            (unknown fields, wrong types, backbone arguments that name files), weights that are not the
            ones exported (checksum) or do not fit the config.
    """
    path = export_file(path)
    metadata = read_metadata(path)
    student = Student.from_spec(checked_spec(metadata.get("config"), path))
    tensors = load_file(str(path))
    # Exports from before the checksum have none to compare.
    if "weights_sha256" in metadata and weights_sha256(tensors) != metadata["weights_sha256"]:
        raise ValueError(f"{path}: the weights do not match the export's checksum (changed or damaged since)")
    try:  # strict: a missing or extra key is an error naming it; fp16/bf16 weights are cast to float32
        student.load_state_dict(tensors)
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit the student its config describes: {error}") from None
    if "preprocessing" in metadata:
        student.preprocessing = Preprocessing.read(json.loads(metadata["preprocessing"]))
    return student.to(device).eval()


def checked_spec(config: str | None, path: Path) -> dict:
    """The export's `config` as `Student.from_spec` takes it, checked against the schema (the recipe's
    `StudentConfig` fields, strictly typed; fields added after the export was made take their defaults)."""
    try:
        spec = json.loads(config) if config is not None else None
        if not isinstance(spec, dict):
            raise RecipeError("expected a JSON object")
        spec = dict(spec)
        max_words, teacher_text = spec.pop("max_words", None), spec.pop("teacher_text", None)
        if type(max_words) is not int or max_words < 1:
            raise RecipeError(f"config.max_words: expected a positive int, got {max_words!r}")
        if teacher_text is not None:
            build_dataclass(TextTower, teacher_text, "config.teacher_text")
        student = build_dataclass(StudentConfig, spec, "config")
        if named := [key for key in student.backbone_kwargs if key in FILE_ARGUMENTS]:
            raise RecipeError(
                f"config.backbone_kwargs: {named} would read files or the network; an export brings its weights"
            )
    except (json.JSONDecodeError, RecipeError, TypeError) as error:  # TypeError: a required field missing
        raise ValueError(f"{path}: not a valid student config ({error})") from None
    return {**spec, "max_words": max_words, "teacher_text": teacher_text}
