"""Where a student's frame encoder (and maybe its text tower) comes from: a timm model, ImageNet weights from a
local file in timm's layout; or the towers of an open_clip model (`student.backbone: open_clip:NAME`), weights
from a local file in the layout `open_clip.create_model(NAME, pretrained=FILE)` loads, which keeps the image
tower aligned with a text tower from the start (MobileViCLIP builds its students so from MobileCLIP).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import open_clip
import timm
import torch
from open_clip.transformer import TextTransformer
from safetensors import safe_open
from torch import nn

from distill.core.schema import StudentConfig

OPEN_CLIP = "open_clip:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # the normalisation every clip is read with (CLIP4Clip's)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class Towers:
    """What a student is built from: the frame encoder (images `[N, 3, H, W]` -> `[N, width]`), the width it
    returns, the normalisation it was trained with (mean, std), and an open_clip model's text tower and
    logit scale (None for timm)."""

    frame_encoder: nn.Module
    width: int
    normalisation: tuple[tuple[float, ...], tuple[float, ...]] = (CLIP_MEAN, CLIP_STD)
    text: TextTransformer | None = None
    logit_scale_log: float | None = None


def open_clip_name(backbone: str) -> str | None:
    """`NAME` of `open_clip:NAME`, None for a timm name."""
    return backbone.removeprefix(OPEN_CLIP) if backbone.startswith(OPEN_CLIP) else None


def check_backbone_name(backbone: str) -> None:
    """Raises ValueError naming `student.backbone` when it is neither a timm model nor an `open_clip:` one."""
    name = open_clip_name(backbone)
    if name is None:
        kind, name, known, found = "timm", backbone, timm.list_models, timm.is_model(backbone)
    else:
        kind, known, found = "open_clip", open_clip.list_models, open_clip.get_model_config(name) is not None
    if found:
        return
    close = difflib.get_close_matches(name, known(), n=3, cutoff=0.7)
    raise ValueError(
        f"student.backbone: no {kind} model {name!r}"
        + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
    )


def build_towers(config: StudentConfig) -> Towers:
    """The frame encoder of `config.backbone` with `config.pretrained`'s weights (random without).

    Raises:
        ValueError: a pretrained file that does not fit the architecture, naming `student.pretrained`, the file
            and the keys.
    """
    name = open_clip_name(config.backbone)
    if name is not None:
        return open_clip_towers(name, config)
    weights = config.pretrained
    try:
        backbone = timm.create_model(
            config.backbone,
            pretrained=weights is not None,
            num_classes=0,
            pretrained_cfg_overlay={"file": weights} if weights else None,
            **config.backbone_kwargs,
        )
    except RuntimeError as error:  # load_state_dict: mis-shaped keys
        raise ValueError(
            f"student.pretrained: {weights} does not fit {config.backbone}: {first_lines(error)}"
        ) from None
    if weights is not None:
        check_timm_keys(backbone, Path(weights), config.backbone, config.backbone_kwargs)
    # The width of what the backbone returns without a classifier: num_features is the width before a
    # pre-logits layer, which some families have (MobileNetV3: 960 features, then a 1280-wide conv head).
    width = getattr(backbone, "head_hidden_size", None) or backbone.num_features
    return Towers(backbone, width)


def first_lines(error: Exception, n: int = 4) -> str:
    """The start of a load_state_dict error, which lists every key that does not fit (hundreds)."""
    lines = str(error).splitlines()
    return "\n".join(lines[:n] + ([f"... and {len(lines) - n} more lines"] if len(lines) > n else []))


def file_keys(path: Path) -> set[str]:
    """The tensor names of a weights file (safetensors: from its header; else a weights-only torch load), unwrapped
    from a `state_dict`/`model` entry and a `module.` prefix as timm's `load_state_dict` does."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    else:
        found = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        for wrapper in ("state_dict", "model"):
            if isinstance(found, dict) and isinstance(found.get(wrapper), dict):
                found = found[wrapper]
        keys = list(found)
    return {key.removeprefix("module.") for key in keys}


def check_timm_keys(backbone: nn.Module, path: Path, name: str, kwargs: dict) -> None:
    """timm loads ImageNet weights into a backbone without a classifier leniently (strict off, only a log line):
    a file of another architecture would leave it random. This holds the file to the backbone: every weight of
    the backbone is in it, and nothing else is but what the model `name` has with its classifier (its head)."""
    have = set(backbone.state_dict())
    with torch.device("meta"):
        whole = set(timm.create_model(name, **kwargs).state_dict())
    found = file_keys(path)
    missing, extra = sorted(have - found), sorted(found - whole)
    if missing or extra:
        raise ValueError(
            f"student.pretrained: {path} does not fit {name}: "
            + "; ".join(
                f"{what} keys {keys[:4]}{' and more' if len(keys) > 4 else ''}"
                for what, keys in (("missing", missing), ("unexpected", extra))
                if keys
            )
            + "; expected timm's state dict of that model (e.g. the model.safetensors of its Hugging Face repo)"
        )


def open_clip_towers(name: str, config: StudentConfig) -> Towers:
    """The image tower of open_clip model `name` (at `config.image_size`) as the frame encoder, its text
    tower (a causal or bidirectional `TextTransformer`, read at open_clip's context length) and its logit
    scale, with `config.pretrained`'s weights: the file `open_clip.create_model(name, pretrained=FILE)` loads
    (strictly), in its plain or custom-text layout. The normalisation is the one open_clip's pretrained tags
    of the model share (MobileCLIP's: none, mean 0 and std 1), else CLIP's."""
    try:
        model = open_clip.create_model(
            name,
            pretrained=config.pretrained,
            pretrained_text=False,
            force_custom_text=True,  # the text tower as one module, `text`, whatever the layout of the file
            force_image_size=config.image_size,
            device=torch.empty(0).device,  # where tensors are made now: the meta device for `check_student`
            **config.backbone_kwargs,
        )
    except RuntimeError as error:  # strict load_state_dict: missing, unexpected and mis-shaped keys together
        raise ValueError(
            f"student.pretrained: {config.pretrained} does not fit open_clip's {name}: {first_lines(error)}"
        ) from None
    return Towers(
        model.visual,
        open_clip.get_model_config(name)["embed_dim"],
        open_clip_normalisation(name),
        text=model.text,
        logit_scale_log=None if model.logit_scale.is_meta else model.logit_scale.item(),
    )


def open_clip_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) all of open_clip's pretrained tags of `name` agree on, else CLIP's."""
    found = {
        (tuple(cfg.get("mean", CLIP_MEAN)), tuple(cfg.get("std", CLIP_STD)))
        for cfg in (open_clip.get_pretrained_cfg(name, tag) for tag in open_clip.list_pretrained_tags_by_model(name))
    }
    return found.pop() if len(found) == 1 else (CLIP_MEAN, CLIP_STD)
