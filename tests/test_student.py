"""The student: tiny real timm backbones, the temporal heads, and the export reloaded in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from distill.core.schema import StudentConfig
from students import (
    Student,
    export_student,
    inherited_text_tower,
    load_student,
    read_metadata,
    round_weights,
    teacher_text_tower,
)
from students.export import DTYPES
from students.model import TextTower
from teachers import tokenize

T = 4
MAX_WORDS = 12


pytestmark = pytest.mark.usefixtures("one_thread")


BACKBONES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 16, "patch_size": 8, "depth": 1}, 16),
    "cnn": ("test_efficientnet", {}, 32),  # timm's tiny registered test architecture (has BatchNorm)
    # returns its 1024-wide pre-logits layer, not its 576 num_features
    "mobilenet": ("mobilenetv3_small_050", {}, 32),
    # EfficientViT-M (cascaded group attention, BatchNorm'd convolutions and linears), narrowed
    "effvit": ("efficientvit_m0", {"img_size": 32, "embed_dim": [16, 32, 48], "num_heads": [2, 2, 2]}, 32),
}


def student_config(backbone: str, temporal: str, **changes) -> StudentConfig:
    """A `StudentConfig` at test size (64 wide: 2 temporal heads); built with `max_words=MAX_WORDS`."""
    name, kwargs, size = BACKBONES[backbone]
    sizes = {
        "max_frames": T,
        "image_size": size,
        "temporal_layers": 1,
        "embed_dim": 64,
        "text_width": 32,
        "text_layers": 1,
        "text_heads": 2,
    }
    return StudentConfig(backbone=name, backbone_kwargs=kwargs, temporal=temporal, **{**sizes, **changes})


def make_student(backbone: str, temporal: str, seed: int = 0) -> Student:
    torch.manual_seed(seed)
    return Student(student_config(backbone, temporal), max_words=MAX_WORDS).eval()


def make_batch(size: int, seed: int = 1):
    """Three videos with 4, 2 and 1 valid frames (a prefix), zero pixels in the padding, three captions."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    video = torch.randn(3, T, 3, size, size, generator=g) * mask[:, :, None, None, None]
    input_ids, attention_mask = tokenize(["a dog runs on the beach", "Cooking pasta!", "a man sings"], MAX_WORDS)
    return input_ids, attention_mask, video, mask


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


CASES = [(b, t) for b in BACKBONES for t in ("mean", "transformer")]


@pytest.mark.parametrize("backbone, temporal", CASES)
@torch.no_grad()
def test_embeddings_are_unit_norm(backbone, temporal):
    student = make_student(backbone, temporal)
    input_ids, attention_mask, video, mask = make_batch(BACKBONES[backbone][2])
    text = student.encode_text(input_ids, attention_mask)
    vid = student.encode_video(video, mask)
    assert text.shape == (3, 64) and vid.shape == (3, 64)
    assert text.dtype == vid.dtype == torch.float32
    close(text.norm(dim=-1), torch.ones(3), atol=1e-5)
    close(vid.norm(dim=-1), torch.ones(3), atol=1e-5)
    logits = student.similarity_logits(input_ids, attention_mask, video, mask)
    close(logits, student.logit_scale() * text @ vid.T, atol=1e-5)
    out = student(input_ids, attention_mask, video, mask)
    assert set(out) == {"text_features", "video_features", "logit_scale"}


@pytest.mark.parametrize("backbone, temporal", CASES)
@torch.no_grad()
def test_padded_frames_do_not_matter(backbone, temporal):
    student = make_student(backbone, temporal)
    _, _, video, mask = make_batch(BACKBONES[backbone][2])
    out = student.encode_video(video, mask)
    noise = torch.randn(video.shape, generator=torch.Generator().manual_seed(2)) * 5
    noisy = torch.where(mask[:, :, None, None, None].bool(), video, noise)
    close(student.encode_video(noisy, mask), out)
    # each padded video equals the same video cut to its valid frames, encoded on its own
    for b, n in enumerate(mask.sum(1).tolist()):
        close(student.encode_video(video[b : b + 1, :n], mask[b : b + 1, :n]), out[b : b + 1], atol=1e-5)


@pytest.mark.parametrize("backbone", ["mobilenet", "effvit"])
@torch.no_grad()
def test_frames_reach_the_backbone_channels_last_with_the_same_features(backbone):
    """Channels-last frames (faster convolutions on CPU) are a layout, not a change of model: the features
    equal the backbone's on the same frames in the default layout, up to float32 rounding (1e-5; the two
    layouts take other convolution kernels, which sum in other orders)."""
    student = make_student(backbone, "transformer")
    _, _, video, mask = make_batch(BACKBONES[backbone][2])
    seen = []
    student.backbone.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    features = student.frame_features(video)
    assert seen[0].is_contiguous(memory_format=torch.channels_last)
    frames = video.flatten(0, 1).contiguous()
    direct = student.frame_proj(student.backbone(frames))  # the frames as they come: contiguous
    close(features, direct.unflatten(0, video.shape[:2]), atol=1e-5)


@pytest.mark.parametrize("temporal, order_matters", [("mean", False), ("transformer", True)])
@torch.no_grad()
def test_frame_order(temporal, order_matters):
    student = make_student("vit", temporal)
    _, _, video, _ = make_batch(16)
    full = torch.ones(3, T, dtype=torch.long)
    forward, backward = student.encode_video(video, full), student.encode_video(video.flip(1), full)
    if order_matters:
        assert (forward - backward).abs().max() > 1e-4
    else:
        close(forward, backward, atol=1e-6)


def test_temporal_transformer_learns_frame_order_quickly():
    """Eight clips and the same clips played backwards (the same frames), each matched to its own random
    target embedding, as feature matching does: within 40 steps every clip is nearer its own target than its
    reversal's. (With positions initialised at 0.01 the two orders stayed within 1e-3 of each other.)"""
    student = make_student("vit", "transformer").train()
    g = torch.Generator().manual_seed(0)
    clips = torch.randn(8, T, 3, 16, 16, generator=g)
    video, mask = torch.cat([clips, clips.flip(1)]), torch.ones(16, T, dtype=torch.long)
    target = torch.nn.functional.normalize(torch.randn(16, 64, generator=g), dim=-1)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    for _ in range(40):
        loss = (student.encode_video(video, mask) - target).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        sims = student.eval().encode_video(video, mask) @ target.T
    own, reversal = sims.diagonal(), sims[torch.arange(16), (torch.arange(16) + 8) % 16]
    assert (own > reversal).all()
    assert (own - reversal).mean() > 0.3


@torch.no_grad()
def test_text_padding_after_eot_is_invisible():
    student = make_student("vit", "mean")
    input_ids, attention_mask, _, _ = make_batch(16)
    out = student.encode_text(input_ids, attention_mask)
    after_eot = torch.arange(MAX_WORDS) > input_ids.argmax(1, keepdim=True)
    junk = torch.randint(1, 49406, input_ids.shape, generator=torch.Generator().manual_seed(3))
    close(student.encode_text(torch.where(after_eot, junk, input_ids), torch.ones_like(attention_mask)), out)


RELOAD = textwrap.dedent("""
    import sys, torch
    from students import load_student
    out = {}
    for name in sys.argv[2:]:
        student = load_student(f"{sys.argv[1]}/{name}.safetensors")
        ids, mask, video, vmask = torch.load(f"{sys.argv[1]}/{name}_inputs.pt")
        with torch.no_grad():
            out[name] = (student.encode_text(ids, mask), student.encode_video(video, vmask),
                         student.similarity_logits(ids, mask, video, vmask), student.training)
    torch.save(out, f"{sys.argv[1]}/outputs.pt")
""")


def test_export_reloads_in_a_new_process(tmp_path):
    expected = {}
    for backbone, temporal in [("vit", "transformer"), ("cnn", "mean")]:
        name = f"{backbone}_{temporal}"
        student = make_student(backbone, temporal)
        batch = make_batch(BACKBONES[backbone][2])
        with torch.no_grad():
            student.train()(*batch)  # moves BatchNorm running statistics off their initial values
            student.logit_scale_log.fill_(2.0)
        student.eval()
        torch.save(batch, tmp_path / f"{name}_inputs.pt")
        metadata = {"recipe": json.dumps({"name": "tiny", "seed": 0}), "preprocess": json.dumps({"size": 16})}
        path = export_student(student, tmp_path / f"{name}.safetensors", metadata)
        assert path == tmp_path / f"{name}.safetensors" and path.is_file()
        assert not list(tmp_path.glob("*.partial"))
        read = read_metadata(path)
        assert read["format"] == "clip4clip-distill/student"
        assert json.loads(read["config"]) == student.spec()
        assert {k: read[k] for k in metadata} == metadata
        with torch.no_grad():
            expected[name] = (
                student.encode_text(*batch[:2]),
                student.encode_video(*batch[2:]),
                student.similarity_logits(*batch),
            )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: threads only cost start-up time
    subprocess.run(
        [sys.executable, "-c", RELOAD, str(tmp_path), *expected],
        check=True,
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        timeout=120,
    )
    outputs = torch.load(tmp_path / "outputs.pt")
    for name, (text, video, logits) in expected.items():
        got_text, got_video, got_logits, training = outputs[name]
        assert training is False
        close(got_text, text)
        close(got_video, video)
        close(got_logits, logits, atol=1e-5)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_export_reloads_the_rounded_student_exactly(tmp_path, dtype):
    """round_weights then export: the file stores half-size floats (BatchNorm's integer counters as they
    are), and load_student gives back float32 weights and outputs equal to the rounded model's."""
    student = make_student("cnn", "transformer")
    batch = make_batch(32)
    with torch.no_grad():
        student.train()(*batch)  # BatchNorm statistics and counters off their initial values
    student.eval()
    before = student.encode_video(*batch[2:])
    round_weights(student, dtype)
    after = student.encode_video(*batch[2:])
    assert 0 < (after - before).abs().max() < 0.02  # rounding moved the embeddings, by a little
    half = export_student(student, tmp_path / "half.safetensors", dtype=dtype)
    full = export_student(student, tmp_path / "full.safetensors")
    assert 0.48 < half.stat().st_size / full.stat().st_size < 0.52
    stored = load_file(half)
    assert {v.dtype for v in stored.values()} == {DTYPES[dtype], torch.int64}
    loaded = load_student(half)
    for name, value in student.state_dict().items():
        assert loaded.state_dict()[name].dtype == value.dtype and torch.equal(loaded.state_dict()[name], value), name
    with torch.no_grad():
        assert torch.equal(loaded.encode_video(*batch[2:]), after)
        assert torch.equal(loaded.encode_text(*batch[:2]), student.encode_text(*batch[:2]))


def test_round_weights_names_a_tensor_fp16_cannot_hold():
    student = make_student("vit", "transformer")
    with torch.no_grad():
        student.frame_proj.weight[0, 0] = 1e5
    with pytest.raises(ValueError, match=r"export.dtype=fp16: frame_proj.weight overflows it .*1e\+05.*fp32 or bf16"):
        round_weights(student, "fp16")
    round_weights(student, "bf16")  # bf16 has float32's range
    assert student.frame_proj.weight[0, 0] == 99840  # 1e5 to bf16's 8 bits of mantissa


def test_teachers_text_tower_is_frozen_and_needs_an_openai_style_teacher():
    from test_teacher import CONTEXT, make_teacher, tiny_arch

    from teachers import CLIP4Clip

    teacher = make_teacher("meanP")
    sizes, weights = teacher_text_tower(teacher, MAX_WORDS)
    assert sizes == TextTower(width=128, heads=2, layers=1, quick_gelu=True)
    student = Student(
        student_config("vit", "mean", embed_dim=128, text="teacher"), max_words=MAX_WORDS, teacher_text=sizes
    )
    student.text.load_state_dict(weights)
    input_ids, attention_mask, *_ = make_batch(16)
    close(student.encode_text(input_ids, attention_mask), teacher.encode_text(input_ids, attention_mask))
    assert not any(p.requires_grad for p in student.text.parameters())
    with pytest.raises(ValueError, match="student.text=teacher needs teacher_text sizes exactly when"):
        Student(student_config("vit", "mean", text="teacher"), max_words=MAX_WORDS)
    with pytest.raises(ValueError, match=f"data.max_words: {CONTEXT + 1}, more than the teacher's text context"):
        teacher_text_tower(teacher, CONTEXT + 1)
    arch = tiny_arch("meanP")
    arch["text_cfg"] = {**arch["text_cfg"], "pool_type": "last"}
    with pytest.raises(ValueError, match=r"student.text=teacher \(or inherit\) needs a teacher whose text tower is"):
        teacher_text_tower(CLIP4Clip(arch), MAX_WORDS)


def three_layer_teacher():
    """The tiny meanP teacher with three text layers (128 wide, 2 heads, QuickGELU; 128-d embeddings)."""
    from test_teacher import tiny_arch

    from teachers import CLIP4Clip

    arch = tiny_arch("meanP")
    arch["text_cfg"] = {**arch["text_cfg"], "layers": 3}
    torch.manual_seed(0)
    return CLIP4Clip(arch).eval()


def test_inherited_text_tower_starts_from_the_teachers_layers_and_trains():
    teacher = three_layer_teacher()
    inherit = {"text": "inherit", "text_width": 128, "text_heads": 2, "embed_dim": 128}
    config = student_config("vit", "mean", **inherit, text_layers=3)
    sizes, weights = inherited_text_tower(teacher, config, MAX_WORDS)
    assert sizes == TextTower(width=128, heads=2, layers=3, quick_gelu=True)
    student = Student(config, max_words=MAX_WORDS, teacher_text=sizes)
    student.text.load_state_dict(weights)
    # every layer: the teacher's own text embeddings, but trainable (text=teacher's are frozen)
    input_ids, attention_mask, *_ = make_batch(16)
    close(student.encode_text(input_ids, attention_mask), teacher.encode_text(input_ids, attention_mask))
    assert all(p.requires_grad for p in student.text.parameters())
    # two of three layers: the first and the last
    sizes, weights = inherited_text_tower(teacher, replace(config, text_layers=2), MAX_WORDS)
    blocks = teacher.clip.transformer.resblocks
    for i, layer in enumerate([0, 2]):
        for key, value in blocks[layer].state_dict().items():
            assert torch.equal(weights[f"transformer.resblocks.{i}.{key}"], value), key
    assert sizes.layers == 2 and not any(k.startswith("transformer.resblocks.2.") for k in weights)
    # another embedding width: the student keeps its own projection
    assert "text_projection" not in inherited_text_tower(teacher, replace(config, embed_dim=64), MAX_WORDS)[1]


@pytest.mark.parametrize("rank", [8, 128])
def test_inherited_factorised_embedding_is_the_best_of_its_rank(rank):
    """A rank-r token embedding inherited is the truncated SVD of the teacher's: its error is the norm of the
    singular values it leaves out (Eckart-Young), none at full rank. Tolerance 1e-4 of the embedding's norm:
    the factors come from a float32 SVD."""
    teacher = three_layer_teacher()
    config = student_config("vit", "mean", text="inherit", text_width=128, text_heads=2, token_rank=rank)
    sizes, weights = inherited_text_tower(teacher, config, MAX_WORDS)
    student = Student(config, max_words=MAX_WORDS, teacher_text=sizes)
    student.text.load_state_dict({**student.text.state_dict(), **weights})
    full = teacher.clip.token_embedding.weight.detach().double()  # norms summed in float64
    with torch.no_grad():
        error = torch.linalg.matrix_norm(student.text.token_embedding(torch.arange(full.shape[0])).double() - full)
    left_out = torch.linalg.svdvals(full)[rank:].square().sum().sqrt()
    assert abs(error - left_out) <= 1e-4 * torch.linalg.matrix_norm(full)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"text_width": 64, "text_heads": 2}, "student.text_width, text_heads: 64, 2, but student.text=inherit"),
        ({"text_layers": 4}, "student.text_layers: 4; student.text=inherit takes 1 to the teacher's 3 layers"),
        ({"token_rank": 129}, "student.token_rank: 129, more than the text width 128"),
    ],
)
def test_inherited_text_tower_names_what_does_not_fit(changes, message):
    config = student_config("vit", "mean", **{"text": "inherit", "text_width": 128, "text_heads": 2, **changes})
    with pytest.raises(ValueError, match=message):
        inherited_text_tower(three_layer_teacher(), config, MAX_WORDS)


def test_load_student_rejects_other_safetensors(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "clip4clip-distill/teacher"})
    with pytest.raises(ValueError, match="other.safetensors"):
        load_student(path)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))  # no metadata at all
    with pytest.raises(ValueError, match="plain.safetensors"):
        read_metadata(plain)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_student(broken)


def rewritten(path: Path, out: Path, *, config=None, tensors=None, drop=()) -> Path:
    """A copy of the export at `path` with its config (a dict) or tensors replaced, metadata keys dropped."""
    metadata = {k: v for k, v in read_metadata(path).items() if k not in drop}
    if config is not None:
        metadata["config"] = json.dumps(config)
    save_file(tensors if tensors is not None else load_file(path), str(out), metadata=metadata)
    return out


def test_load_student_checks_the_config_and_the_weights_naming_the_file(tmp_path):
    student = make_student("vit", "transformer")
    path = export_student(student, tmp_path / "good.safetensors", dtype="fp16")
    config = json.loads(read_metadata(path)["config"])
    bad = tmp_path / "bad.safetensors"
    for change, message in (
        ({"backbone_layers": 2}, "unknown key 'config.backbone_layers'"),
        ({"embed_dim": "64"}, "config.embed_dim: expected int"),
        ({"max_words": None}, "config.max_words: expected a positive int"),
        ({"backbone_kwargs": {**config["backbone_kwargs"], "checkpoint_path": "/etc/x.pth"}}, "would read files"),
        ({"teacher_text": {"width": 32}}, "missing"),
    ):
        with pytest.raises(ValueError, match=f"{bad}: not a valid student config .*{message}"):
            load_student(rewritten(path, bad, config={**config, **change}))
    # A config field added after an export was made takes its default: older exports still load.
    older = {k: v for k, v in config.items() if k != "token_rank"}
    assert load_student(rewritten(path, bad, config=older)).config.token_rank == 0
    # One weight changed after export: the checksum says so; without a checksum (older exports) it loads.
    tensors = load_file(path)
    tensors["frame_proj.bias"] = tensors["frame_proj.bias"] + 1
    with pytest.raises(ValueError, match=f"{bad}: the weights do not match the export's checksum"):
        load_student(rewritten(path, bad, tensors=tensors))
    assert load_student(rewritten(path, bad, tensors=tensors, drop=["weights_sha256"]))
    # Weights of another student under this config: the mismatch names the file and the tensor.
    other = export_student(make_student("vit", "mean"), tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=f"(?s){bad}: the weights do not fit .*frame_position_embeddings"):
        load_student(rewritten(other, bad, config=config, drop=["weights_sha256"]))


# Pretrained backbones


def timm_weights(path: Path, **kwargs) -> dict[str, torch.Tensor]:
    """A timm ViT-Tiny-class classifier's weights at random, written as an ImageNet checkpoint would be
    (with its 10-class head); returns them."""
    import timm

    torch.manual_seed(7)
    model = timm.create_model("vit_tiny_patch16_224", num_classes=10, patch_size=8, depth=1, **kwargs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_loads_local_timm_weights(tmp_path, suffix):
    weights = timm_weights(tmp_path / f"vit{suffix}", img_size=16)
    student = Student(student_config("vit", "mean", pretrained=str(tmp_path / f"vit{suffix}")), max_words=MAX_WORDS)
    backbone = student.backbone.state_dict()
    assert backbone.keys() == {k for k in weights if not k.startswith("head.")}  # the classifier is dropped
    for name, value in backbone.items():
        assert torch.equal(value, weights[name]), name
    # Only the backbone trains at coef_lr; the temporal head, projection and text tower are new.
    assert {id(p) for p in student.pretrained_parameters()} == {id(p) for p in student.backbone.parameters()}
    assert not Student(student_config("vit", "mean"), max_words=MAX_WORDS).pretrained_parameters()


def test_pretrained_position_embeddings_follow_the_image_size(tmp_path):
    """Weights for 32 px frames into a 16 px student: timm resamples the 4x4 patch grid to 2x2."""
    weights = timm_weights(tmp_path / "vit.safetensors", img_size=32)
    student = Student(student_config("vit", "mean", pretrained=str(tmp_path / "vit.safetensors")), max_words=MAX_WORDS)
    assert weights["pos_embed"].shape == (1, 1 + 16, 192)
    assert student.backbone.pos_embed.shape == (1, 1 + 4, 192)
    assert torch.equal(student.backbone.pos_embed[0, 0], weights["pos_embed"][0, 0])  # the class token's


def test_export_of_a_pretrained_student_loads_without_the_weights_file(tmp_path):
    timm_weights(tmp_path / "vit.safetensors", img_size=16)
    student = Student(
        student_config("vit", "transformer", pretrained=str(tmp_path / "vit.safetensors")), max_words=MAX_WORDS
    )
    export_student(student, tmp_path / "student.safetensors")
    (tmp_path / "vit.safetensors").unlink()
    loaded = load_student(tmp_path / "student.safetensors")
    for name, value in student.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_factorised_token_embedding_is_small_and_exports(tmp_path):
    """token_rank=8: 49,408 x 8 + 8 x 32 embedding parameters instead of 49,408 x 32, every caption still
    encodable (unit norm), initialised at open_clip's token scale, and the export reloads it exactly."""
    torch.manual_seed(0)
    full = Student(student_config("vit", "transformer"), max_words=MAX_WORDS)
    small = Student(student_config("vit", "transformer", token_rank=8), max_words=MAX_WORDS).eval()
    count = sum(p.numel() for p in small.text.token_embedding.parameters())
    assert count == 49408 * 8 + 8 * 32 and full.text.token_embedding.weight.numel() == 49408 * 32
    others = sum(p.numel() for p in full.parameters()) - 49408 * 32
    assert sum(p.numel() for p in small.parameters()) == others + count
    vectors = small.text.token_embedding(torch.arange(49408))
    assert vectors.std().item() == pytest.approx(0.02, rel=0.05)  # 1.6 M draws: well inside 5%
    batch = make_batch(16)
    with torch.no_grad():
        text = small.encode_text(*batch[:2])
    close(text.norm(dim=-1), torch.ones(3))
    loaded = load_student(export_student(small, tmp_path / "small.safetensors", dtype="fp32"))
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(*batch[:2]), text)
    with pytest.raises(ValueError, match="student.token_rank: the teacher's text tower"):
        Student(student_config("vit", "transformer", token_rank=8, text="teacher"), max_words=8, teacher_text=TINY_TEXT)


TINY_TEXT = TextTower(width=32, heads=2, layers=1, quick_gelu=True)
