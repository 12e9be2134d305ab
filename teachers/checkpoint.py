"""Original CLIP4Clip checkpoints and OpenAI CLIP weights: safe reading, the architecture from tensor shapes,
strict loading, and writing a teacher back in the original layout.

The architecture rules are CLIP4Clip's and OpenAI's (see shared/clip4clip-spec.md, section 2): widths, patch
and grid from tensor shapes, layer counts from the distinct block indices, heads = width // 64, the head
from the key names.
"""

from __future__ import annotations

import math
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

from teachers.clip4clip import CLIP4Clip

OPENAI_ONLY = ("input_resolution", "context_length", "vocab_size")  # OpenAI attributes that are not weights
# Checked in this order: a model trained without --loose_type also holds cross.* whatever its sim_header.
HEAD_PREFIXES = (
    ("cross.", "tightTransf"),
    ("similarity_dense.", "tightTransf"),
    ("lstm_visual.", "seqLSTM"),
    ("transformerClip.", "seqTransf"),
)
NEEDED = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "text_projection",
    "positional_embedding",
    "token_embedding.weight",
    "ln_final.weight",
)  # the CLIP tensors the shapes are read from
LISTED = 10  # keys shown per kind in a mismatch error


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("/constants.pkl") or "/code/" in name for name in archive.namelist())


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file, never running pickled code.

    `.safetensors` through safetensors; TorchScript archives (OpenAI's JIT `.pt` files) through
    `torch.jit.load`, whose TorchScript (not Python) is only used for its `state_dict()`; anything else
    through `torch.load(weights_only=True)`. `{"state_dict": ...}` wrappers and DDP's `module.` prefixes are
    removed.
    """
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        elif _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; it still reads these
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # corrupt files, and pickles the weights-only unpickler refuses
        raise ValueError(
            f"{path}: not a readable checkpoint of tensors (safetensors, a weights-only torch.save "
            f"or TorchScript): {error}"
        ) from error
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path}: expected a state dict of tensors (or {{'state_dict': ...}}), got {type(state).__name__}"
        )
    return {k.removeprefix("module."): v for k, v in state.items()}


def detect_sim_header(keys) -> str:
    """The CLIP4Clip head from key names: cross/similarity_dense, lstm_visual, transformerClip, else meanP."""
    for prefix, sim_header in HEAD_PREFIXES:
        if any(k.startswith(prefix) for k in keys):
            return sim_header
    return "meanP"


def _layers(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in keys if (m := pattern.match(k))})


def infer_arch(state: Mapping[str, torch.Tensor], source) -> dict:
    """The CLIP4Clip architecture of a state dict with `clip.`-prefixed backbone keys."""
    missing = [f"clip.{k}" for k in NEEDED if f"clip.{k}" not in state]
    if missing:
        raise ValueError(f"{source}: not a CLIP4Clip checkpoint or an OpenAI CLIP (ViT) state dict: missing {missing}")
    conv1 = state["clip.visual.conv1.weight"]  # [width, 3, patch, patch]
    grid = round(math.sqrt(state["clip.visual.positional_embedding"].shape[0] - 1))
    text_width = state["clip.ln_final.weight"].shape[0]
    sim_header = detect_sim_header(state)
    cross_prefix = {"seqTransf": "transformerClip.resblocks.", "tightTransf": "cross.transformer.resblocks."}
    return {
        "embed_dim": state["clip.text_projection"].shape[1],
        "vision_cfg": {
            "image_size": conv1.shape[-1] * grid,
            "patch_size": conv1.shape[-1],
            "width": conv1.shape[0],
            "layers": _layers(state, "clip.visual.transformer.resblocks."),
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": state["clip.positional_embedding"].shape[0],
            "vocab_size": state["clip.token_embedding.weight"].shape[0],
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": _layers(state, "clip.transformer.resblocks."),
        },
        "sim_header": sim_header,
        "cross_layers": _layers(state, cross_prefix[sim_header]) if sim_header in cross_prefix else 0,
        "linear_patch": "3d" if "clip.visual.conv2.weight" in state else "2d",
    }


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - LISTED} more" if len(items) > LISTED else ""
    return f"[{', '.join(items[:LISTED])}{more}]"


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source) -> None:
    """`model.load_state_dict(state)` (values cast to the parameters' dtype) after checking every key and
    shape; all mismatches are reported together in one error that names `source`."""
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mis_shaped = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in sorted(expected.keys() & state.keys())
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"{source}: the weights do not fit the model: missing keys {_listed(missing)}, "
            f"unexpected keys {_listed(unexpected)}, mis-shaped keys {_listed(mis_shaped)}"
        )
    model.load_state_dict(state)


def load_checkpoint(path: Path) -> CLIP4Clip:
    """A teacher from an original CLIP4Clip checkpoint (any head, 2d or 3d patch) or an OpenAI CLIP state
    dict (the backbone alone: a zero-shot meanP teacher)."""
    state = read_state_dict(path)
    if not any(k.startswith("clip.") for k in state):  # OpenAI CLIP: CLIP4Clip's backbone without the prefix
        state = {f"clip.{k}": v for k, v in state.items() if k not in OPENAI_ONLY}
    teacher = CLIP4Clip(infer_arch(state, path))
    load_strict(teacher, state, path)
    return teacher


def save_original_checkpoint(teacher: CLIP4Clip, path: str | Path) -> None:
    """Writes `teacher` as CLIP4Clip writes `pytorch_model.bin.N`: `torch.save` of a state dict under the
    original key names.

    Tensors are float32, not the original's fp16 CLIP tensors: the file round-trips through `load_teacher`
    without loss, and the original code casts it into its fp16 parameters when it loads it. The original
    reads the CLIP shapes from `--pretrained_clip_name`, so it loads the file when the backbone has that
    model's shapes (ViT-B/32, B/16); its heads also need the embedding width equal to the text width.
    """
    if "open_clip_model" in teacher.arch:
        raise ValueError(
            f"{teacher.arch['open_clip_model']}: an open_clip-built teacher has no original "
            "CLIP4Clip layout (its CLIP is not OpenAI's QuickGELU ViT)"
        )
    embed_dim, text_width = teacher.arch["embed_dim"], teacher.arch["text_cfg"]["width"]
    if embed_dim != text_width:
        raise ValueError(
            f"the original CLIP4Clip layout needs embed_dim == text width; this teacher has "
            f"embed_dim {embed_dim} and text width {text_width}"
        )
    torch.save({k: v.detach().float().cpu().contiguous() for k, v in teacher.state_dict().items()}, path)
