"""Named CLIP4Clip architectures, registered by their function's name (timm's habit): real sizes for
benchmarks, tiny ones so tests build real models in milliseconds. A recipe's own teacher is built from
its `teacher` section instead (`distill.context.teacher_arch`)."""

from __future__ import annotations

from collections.abc import Callable

from distill.core.schema import TeacherConfig

ARCHS: dict[str, Callable[..., dict]] = {}


def register_arch(fn: Callable[..., dict]) -> Callable[..., dict]:
    ARCHS[fn.__name__] = fn
    return fn


def clip4clip_arch(name: str, sim_header: str = "meanP", **kwargs) -> dict:
    """The arch dict of the registered architecture `name` (for `CLIP4Clip(arch)`) with that head."""
    if name not in ARCHS:
        raise ValueError(f"no CLIP4Clip architecture {name!r}; registered: {', '.join(ARCHS)}")
    return ARCHS[name](sim_header, **kwargs)


def clip_arch(
    *,
    embed_dim: int,
    image_size: int,
    patch_size: int,
    vision_width: int,
    vision_layers: int,
    context_length: int,
    text_width: int,
    text_layers: int,
    sim_header: str,
    cross_layers: int,
) -> dict:
    """An OpenAI-style CLIP (heads = width // 64, QuickGELU) under a CLIP4Clip head."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": vision_width,
            "layers": vision_layers,
            "head_width": 64,
        },
        "text_cfg": {
            "context_length": context_length,
            "vocab_size": 49408,
            "width": text_width,
            "heads": max(1, text_width // 64),
            "layers": text_layers,
        },
        "sim_header": sim_header,
        "cross_layers": cross_layers,
    }


@register_arch
def vit_b_32(sim_header: str, context_length: int = 77) -> dict:
    """OpenAI's ViT-B/32 CLIP with CLIP4Clip's 4-layer seqTransf/tightTransf transformer."""
    return clip_arch(
        embed_dim=512,
        image_size=224,
        patch_size=32,
        vision_width=768,
        vision_layers=12,
        context_length=context_length,
        text_width=512,
        text_layers=12,
        sim_header=sim_header,
        cross_layers=4,
    )


@register_arch
def test_tiny(sim_header: str, context_length: int = 16) -> dict:
    """16 px frames, one-layer towers, a 128-wide text tower (2 heads), a 2-layer head: for tests."""
    return clip_arch(
        embed_dim=128,
        image_size=16,
        patch_size=8,
        vision_width=64,
        vision_layers=1,
        context_length=context_length,
        text_width=128,
        text_layers=1,
        sim_header=sim_header,
        cross_layers=2,
    )


def teacher_arch(config: TeacherConfig, max_words: int) -> dict:
    """The CLIP4Clip architecture of a teacher trained from scratch by the teacher stage."""
    return clip_arch(
        embed_dim=config.text_width,  # CLIP4Clip's heads need the embedding width equal to the text width
        image_size=config.image_size,
        patch_size=config.patch_size,
        vision_width=config.vision_width,
        vision_layers=config.vision_layers,
        context_length=max_words,
        text_width=config.text_width,
        text_layers=config.text_layers,
        sim_header=config.sim_header,
        cross_layers=config.cross_layers,
    )
