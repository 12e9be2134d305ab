"""`open_clip:<MODEL>?pretrained=<local file>` teacher sources: any open_clip model as a zero-shot meanP teacher."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import open_clip

from teachers.clip4clip import CLIP4Clip

PREFIX = "open_clip:"


def parse_open_clip_source(source: str) -> tuple[str, Path]:
    """`open_clip:<MODEL>?pretrained=<file>` -> `(MODEL, file)`; anything else is a ValueError."""
    model, _, query = source.removeprefix(PREFIX).partition("?")
    key, _, weights = query.partition("=")
    if not source.startswith(PREFIX) or not model or key != "pretrained" or not weights:
        raise ValueError(
            f"teacher source {source!r}: expected {PREFIX}<MODEL>?pretrained=<local weights file>, "
            f"e.g. {PREFIX}ViT-B-32-quickgelu?pretrained=/models/vit_b_32.pt"
        )
    if open_clip.get_model_config(model) is None:
        close = difflib.get_close_matches(model, open_clip.list_models(), n=3, cutoff=0.7)
        raise ValueError(
            f"teacher source {source!r}: no open_clip model {model!r}"
            + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
        )
    return model, Path(weights)


def load_open_clip_teacher(source: str) -> CLIP4Clip:
    """`open_clip.create_model(MODEL, pretrained=file)` (strict, weights-only loading) wrapped as a meanP
    CLIP4Clip. The arch keeps the model name and its open_clip config, so an export rebuilds it."""
    model, weights = parse_open_clip_source(source)
    if not weights.is_file():
        raise FileNotFoundError(f"teacher source {source}: no such weights file: {weights}")
    config = open_clip.get_model_config(model)
    try:
        clip = open_clip.create_model(model, pretrained=str(weights), pretrained_text=False)
    except RuntimeError as error:  # strict load_state_dict: missing, unexpected and mis-shaped keys together
        raise ValueError(f"teacher source {source}: the weights do not fit {model}: {error}") from error
    arch = {
        "open_clip_model": model,
        "embed_dim": config["embed_dim"],
        "vision_cfg": copy.deepcopy(config["vision_cfg"]),
        "text_cfg": copy.deepcopy(config["text_cfg"]),
        "sim_header": "meanP",
        "cross_layers": 0,
    }
    return CLIP4Clip(arch, clip=clip)
