"""Loading teachers from original CLIP4Clip checkpoints, OpenAI CLIP weights and open_clip, against a
reference written from the original code (shared/clip4clip-spec.md, sections 1.2-1.4 and 2).

The checkpoints are built here from random weights under the real key names, with the real BPE vocabulary
size, 77 text positions and the original's fp16/fp32 split, at tiny widths.
"""

from __future__ import annotations

import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import build_model_from_openai_state_dict
from safetensors.torch import save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from distill.core.config import RecipeError
from distill.recipe import load_recipe
from teachers import CLIP4Clip, load_teacher, save_original_checkpoint, save_teacher, tokenize

VOCAB, CONTEXT = 49408, 77
VISION_WIDTH, PATCH, GRID, VISION_LAYERS = 64, 8, 2, 2  # 16 px frames
WIDTH, TEXT_LAYERS = 64, 1  # text width = embed dim (CLIP4Clip's heads need it); cross: 8 heads of 8
CROSS_LAYERS = 3
LOGIT_SCALE = 4.5  # below ln(100): the original's exp() and our clamped exp() agree
HEADS = ("meanP", "seqLSTM", "seqTransf", "tightTransf")
ATOL = 1e-4
CAPTIONS = [
    "a dog runs on the beach",
    "Cooking pasta, with a lot of cheese & basil!",
    "a man sings",
    "two children are playing football in a park while their parents watch from a bench nearby",
]
MASKS = {  # valid frames are a prefix; the second set has no full-length video (seqLSTM's fill-in matters)
    "mixed": [[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 0]],
    "none_full": [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]],
}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------- original-format checkpoints


class Weights:
    """Random tensors: fp16 where CLIP4Clip's convert_weights leaves them fp16 (Conv/Linear, in_proj, projections)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, std: float = 0.02, mean: float = 0.0, half: bool = False) -> torch.Tensor:
        x = torch.randn(*shape, generator=self.g) * std + mean
        return x.half() if half else x

    def block(self, prefix: str, w: int, half: bool) -> dict[str, torch.Tensor]:
        """A CLIP residual block under the original names."""
        linear = dict(std=w**-0.5, half=half)
        return {
            f"{prefix}attn.in_proj_weight": self(3 * w, w, **linear),
            f"{prefix}attn.in_proj_bias": self(3 * w, half=half),
            f"{prefix}attn.out_proj.weight": self(w, w, **linear),
            f"{prefix}attn.out_proj.bias": self(w, half=half),
            f"{prefix}ln_1.weight": self(w, std=0.1, mean=1.0),
            f"{prefix}ln_1.bias": self(w, std=0.1),
            f"{prefix}mlp.c_fc.weight": self(4 * w, w, **linear),
            f"{prefix}mlp.c_fc.bias": self(4 * w, half=half),
            f"{prefix}mlp.c_proj.weight": self(w, 4 * w, std=(4 * w) ** -0.5, half=half),
            f"{prefix}mlp.c_proj.bias": self(w, half=half),
            f"{prefix}ln_2.weight": self(w, std=0.1, mean=1.0),
            f"{prefix}ln_2.bias": self(w, std=0.1),
        }


def original_checkpoint(sim_header: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict laid out as CLIP4Clip's `pytorch_model.bin.N` (spec section 2)."""
    r = Weights(seed)
    vw, w = VISION_WIDTH, WIDTH
    sd = {
        "clip.positional_embedding": r(CONTEXT, w, std=0.01),
        "clip.text_projection": r(w, w, std=w**-0.5, half=True),
        "clip.logit_scale": torch.tensor(LOGIT_SCALE),
        "clip.token_embedding.weight": r(VOCAB, w),
        "clip.ln_final.weight": r(w, std=0.1, mean=1.0),
        "clip.ln_final.bias": r(w, std=0.1),
        "clip.visual.class_embedding": r(vw, std=vw**-0.5),
        "clip.visual.positional_embedding": r(GRID * GRID + 1, vw, std=vw**-0.5),
        "clip.visual.proj": r(vw, w, std=vw**-0.5, half=True),
        "clip.visual.conv1.weight": r(vw, 3, PATCH, PATCH, std=(3 * PATCH * PATCH) ** -0.5, half=True),
        "clip.visual.ln_pre.weight": r(vw, std=0.1, mean=1.0),
        "clip.visual.ln_pre.bias": r(vw, std=0.1),
        "clip.visual.ln_post.weight": r(vw, std=0.1, mean=1.0),
        "clip.visual.ln_post.bias": r(vw, std=0.1),
    }
    for i in range(TEXT_LAYERS):
        sd |= r.block(f"clip.transformer.resblocks.{i}.", w, half=True)
    for i in range(VISION_LAYERS):
        sd |= r.block(f"clip.visual.transformer.resblocks.{i}.", vw, half=True)
    if sim_header in ("seqLSTM", "seqTransf"):
        sd["frame_position_embeddings.weight"] = r(CONTEXT, w, std=0.5)
    if sim_header == "seqLSTM":
        for name in ("weight_ih_l0", "weight_hh_l0"):
            sd[f"lstm_visual.{name}"] = r(4 * w, w, std=w**-0.5)
        for name in ("bias_ih_l0", "bias_hh_l0"):
            sd[f"lstm_visual.{name}"] = r(4 * w, std=0.1)
    if sim_header == "seqTransf":
        for i in range(CROSS_LAYERS):
            sd |= r.block(f"transformerClip.resblocks.{i}.", w, half=False)
    if sim_header == "tightTransf":
        sd["cross.embeddings.position_embeddings.weight"] = r(CONTEXT, w, std=0.5)
        for i in range(CROSS_LAYERS):
            sd |= r.block(f"cross.transformer.resblocks.{i}.", w, half=False)
        sd |= {
            "cross.pooler.ln_pool.weight": r(w, std=0.1, mean=1.0),
            "cross.pooler.ln_pool.bias": r(w, std=0.1),
            "cross.pooler.dense.weight": r(w, w, std=w**-0.5),
            "cross.pooler.dense.bias": r(w, std=0.1),
            "similarity_dense.weight": r(1, w, std=w**-0.5),
            "similarity_dense.bias": r(1, std=0.1),
        }
    return sd


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[dict, object]]:
    """head -> (state dict, path of its `pytorch_model.bin.0`), all heads on the same CLIP weights."""
    root = tmp_path_factory.mktemp("clip4clip")
    out = {}
    for head in HEADS:
        sd = original_checkpoint(head)
        path = root / head / "pytorch_model.bin.0"
        path.parent.mkdir()
        torch.save(sd, path)
        out[head] = (sd, path)
    return out


@pytest.fixture(scope="module")
def teachers(checkpoints):
    return {head: load_teacher(path) for head, (_, path) in checkpoints.items()}


def inputs(mask_name: str = "mixed", seed: int = 1):
    """Captions of different lengths (max_words 32) and 4 videos of 4 frames, zero pixels where masked."""
    mask = torch.tensor(MASKS[mask_name])
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(4, 4, 3, GRID * PATCH, GRID * PATCH, generator=g) * mask[:, :, None, None, None]
    input_ids, attention_mask = tokenize(CAPTIONS, max_words=32)
    return input_ids, attention_mask, video, mask


# ---------------------------------------------------------------- the reference, after CLIP4Clip's modeling.py


def reference_clip(sd: dict) -> open_clip.CLIP:
    """The original's CLIP in fp32: open_clip's OpenAI builder is bit-identical to it there (spec section 7)."""
    clip_sd = {k.removeprefix("clip."): v.clone() for k, v in sd.items() if k.startswith("clip.")}
    return build_model_from_openai_state_dict(clip_sd, cast_dtype=None).float().eval()


def bert_layer_norm(x, weight, bias, eps=1e-12):
    """until_module.LayerNorm (TF style), used by module_cross."""
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return weight * (x - u) / torch.sqrt(s + eps) + bias


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def cross_block(x, p, prefix, heads, key_bias):
    """module_cross.ResidualAttentionBlock on `x [N, L, D]`; `key_bias [N, L]` is added to every query's scores."""
    n, length, d = x.shape
    h = bert_layer_norm(x, p[f"{prefix}ln_1.weight"], p[f"{prefix}ln_1.bias"])
    q, k, v = (h @ p[f"{prefix}attn.in_proj_weight"].T + p[f"{prefix}attn.in_proj_bias"]).chunk(3, dim=-1)
    q, k, v = (t.reshape(n, length, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads) + key_bias[:, None, None, :]
    a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, d)
    x = x + a @ p[f"{prefix}attn.out_proj.weight"].T + p[f"{prefix}attn.out_proj.bias"]
    h = bert_layer_norm(x, p[f"{prefix}ln_2.weight"], p[f"{prefix}ln_2.bias"])
    h = quick_gelu(h @ p[f"{prefix}mlp.c_fc.weight"].T + p[f"{prefix}mlp.c_fc.bias"])
    return x + h @ p[f"{prefix}mlp.c_proj.weight"].T + p[f"{prefix}mlp.c_proj.bias"]


@torch.no_grad()
def reference_logits(sd: dict, sim_header: str, input_ids, video, video_mask) -> torch.Tensor:
    """CLIP4Clip's eval-mode `get_similarity_logits` on the fp32 weights of `sd`."""
    p = {k: v.float() for k, v in sd.items()}
    clip = reference_clip(sd)
    sequence_output = clip.encode_text(F.pad(input_ids, (0, CONTEXT - input_ids.shape[1])))  # (N, D): the EOT row
    b, t = video_mask.shape
    visual_output = clip.encode_image(video.reshape(b * t, *video.shape[2:])).reshape(b, t, -1)
    extended_mask = (1.0 - video_mask.float()) * -1000000.0  # (B, T), expanded over queries and heads
    if sim_header == "tightTransf":  # _cross_similarity: one cross pass per (text, video) pair
        logits = torch.zeros(len(sequence_output), b)
        for i, text in enumerate(sequence_output):
            for j in range(b):
                x = torch.cat([text[None], visual_output[j]])[None]  # (1, 1+T, D)
                x = x + p["cross.embeddings.position_embeddings.weight"][: 1 + t]
                key_bias = torch.cat([torch.zeros(1), extended_mask[j]])[None]  # the text token is always valid
                for layer in range(CROSS_LAYERS):
                    x = cross_block(x, p, f"cross.transformer.resblocks.{layer}.", 8, key_bias)
                pooled = bert_layer_norm(x, p["cross.pooler.ln_pool.weight"], p["cross.pooler.ln_pool.bias"])[:, 0]
                pooled = quick_gelu(pooled @ p["cross.pooler.dense.weight"].T + p["cross.pooler.dense.bias"])
                logits[i, j] = (pooled @ p["similarity_dense.weight"].T + p["similarity_dense.bias"])[0, 0]
        return logits
    if sim_header == "seqLSTM":
        lstm = torch.nn.LSTM(WIDTH, WIDTH, batch_first=True)
        lstm.load_state_dict({k.removeprefix("lstm_visual."): v for k, v in p.items() if k.startswith("lstm_visual.")})
        packed = pack_padded_sequence(visual_output, video_mask.sum(-1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True)
        out = torch.cat((out, visual_output[:, out.size(1) :, ...].contiguous()), dim=1)
        visual_output = out + visual_output
    if sim_header == "seqTransf":
        x = visual_output + p["frame_position_embeddings.weight"][:t]
        for layer in range(CROSS_LAYERS):
            x = cross_block(x, p, f"transformerClip.resblocks.{layer}.", WIDTH // 64, extended_mask)
        visual_output = x + visual_output
    v = visual_output / visual_output.norm(dim=-1, keepdim=True)
    m = video_mask.float().unsqueeze(-1)
    v = (v * m).sum(1) / m.sum(1).clamp(min=1.0)
    v = v / v.norm(dim=-1, keepdim=True)
    text = sequence_output / sequence_output.norm(dim=-1, keepdim=True)
    return p["clip.logit_scale"].exp() * text @ v.T


# ---------------------------------------------------------------- original checkpoints


@pytest.mark.parametrize("mask_name", sorted(MASKS))
@pytest.mark.parametrize("head", HEADS)
def test_similarity_logits_equal_the_original(checkpoints, teachers, head, mask_name):
    sd, _ = checkpoints[head]
    input_ids, attention_mask, video, mask = inputs(mask_name)
    with torch.no_grad():
        logits = teachers[head].similarity_logits(input_ids, attention_mask, video, mask)
    reference = reference_logits(sd, head, input_ids, video, mask)
    assert logits.shape == (len(CAPTIONS), 4) and logits.dtype == torch.float32
    assert reference.std() > 0.1  # not a degenerate comparison
    torch.testing.assert_close(logits, reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("head", HEADS)
def test_bf16_precision_stays_near_the_original_and_fp32_ignores_outer_autocast(checkpoints, teachers, head):
    """What a CUDA run does by default (precision auto), on CPU: bf16 autocast inside the teacher, float32
    out. fp32 keeps a teacher exact even inside the student's mixed-precision autocast."""
    sd, path = checkpoints[head]
    input_ids, attention_mask, video, mask = inputs("mixed")
    reference = reference_logits(sd, head, input_ids, video, mask)
    fp32, bf16 = teachers[head], load_teacher(path, precision="bf16")
    assert fp32.precision == "fp32" and bf16.precision == "bf16"  # auto on CPU is fp32
    with torch.no_grad():
        low = bf16.similarity_logits(input_ids, attention_mask, video, mask)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            inside = fp32.similarity_logits(input_ids, attention_mask, video, mask)
            frames = fp32.frame_features(video)
    assert low.dtype == inside.dtype == frames.dtype == torch.float32
    torch.testing.assert_close(inside, reference, atol=ATOL, rtol=0)
    error = (low - reference).abs().max().item()
    assert 0 < error < 0.05 * reference.abs().max().item()  # bf16 really ran, and stays close


@pytest.mark.parametrize("head", HEADS)
def test_architecture_and_head_come_from_the_checkpoint(teachers, head):
    teacher = teachers[head]
    assert teacher.sim_header == head and teacher.is_tight == (head == "tightTransf")
    arch = teacher.arch
    assert arch["vision_cfg"] == {
        "image_size": GRID * PATCH,
        "patch_size": PATCH,
        "width": VISION_WIDTH,
        "layers": VISION_LAYERS,
        "head_width": 64,
    }
    assert arch["text_cfg"] == {
        "context_length": CONTEXT,
        "vocab_size": VOCAB,
        "width": WIDTH,
        "heads": 1,
        "layers": TEXT_LAYERS,
    }
    assert arch["embed_dim"] == WIDTH and arch["linear_patch"] == "2d"
    assert arch["cross_layers"] == (CROSS_LAYERS if head in ("seqTransf", "tightTransf") else 0)
    if head == "seqTransf":
        assert teacher.transformerClip.resblocks[0].attn.num_heads == WIDTH // 64
        assert teacher.transformerClip.resblocks[0].ln_1.eps == 1e-12
    if head == "tightTransf":
        assert teacher.cross.transformer.resblocks[0].attn.num_heads == 8
        assert teacher.cross.pooler["ln_pool"].eps == 1e-12
    assert not teacher.training and all(not p.requires_grad and p.dtype == torch.float32 for p in teacher.parameters())


def test_tight_teacher_has_no_embeddings_and_scores_in_chunks(teachers):
    teacher = teachers["tightTransf"]
    input_ids, attention_mask, video, mask = inputs()
    with pytest.raises(RuntimeError, match="tightTransf teacher has no text or video embeddings"):
        teacher.encode_text(input_ids, attention_mask)
    with pytest.raises(RuntimeError, match="tightTransf"):
        teacher.encode_video(video, mask)
    with torch.no_grad():
        whole = teacher.similarity_logits(input_ids, attention_mask, video, mask)
        for chunk_pairs in (1, 3, 7):
            torch.testing.assert_close(
                teacher.similarity_logits(input_ids, attention_mask, video, mask, chunk_pairs=chunk_pairs),
                whole,
                atol=1e-5,
                rtol=0,
            )
        text, frames = teacher.text_features(input_ids), teacher.frame_features(video)
        assert torch.equal(teacher.cross_scores(text, frames, mask), whole)


@torch.no_grad()
def test_tight_scores_ignore_masked_frames(teachers):
    teacher = teachers["tightTransf"]
    input_ids, attention_mask, video, mask = inputs()
    noisy = torch.where(mask[:, :, None, None, None].bool(), video, torch.randn(video.shape) * 5)
    torch.testing.assert_close(
        teacher.similarity_logits(input_ids, attention_mask, noisy, mask),
        teacher.similarity_logits(input_ids, attention_mask, video, mask),
        atol=1e-5,
        rtol=0,
    )


@torch.no_grad()
def test_wrapped_and_ddp_prefixed_checkpoints_load(tmp_path, checkpoints, teachers):
    sd, _ = checkpoints["seqTransf"]
    batch = inputs()
    expected = teachers["seqTransf"].similarity_logits(*batch)
    for name, obj in (
        ("wrapped", {"state_dict": sd, "epoch": 3}),
        ("ddp", {f"module.{k}": v for k, v in sd.items()}),
        ("both", {"state_dict": {f"module.{k}": v for k, v in sd.items()}}),
    ):
        path = tmp_path / f"{name}.bin"
        torch.save(obj, path)
        teacher = load_teacher(path)
        assert teacher.sim_header == "seqTransf"
        assert torch.equal(teacher.similarity_logits(*batch), expected), name


def test_missing_unexpected_and_mis_shaped_keys_are_one_error(tmp_path, checkpoints):
    sd = dict(checkpoints["seqLSTM"][0])
    del sd["lstm_visual.bias_hh_l0"]
    sd["clip.visual.extra_scale"] = torch.ones(3)
    sd["clip.ln_final.bias"] = torch.zeros(WIDTH + 1)
    path = tmp_path / "pytorch_model.bin.4"
    torch.save(sd, path)
    with pytest.raises(ValueError) as error:
        load_teacher(path)
    message = str(error.value)
    assert str(path) in message
    assert "missing keys [lstm_visual.bias_hh_l0]" in message
    assert "unexpected keys [clip.visual.extra_scale]" in message
    assert f"mis-shaped keys [clip.ln_final.bias ({WIDTH + 1},) (expected ({WIDTH},))]" in message


def test_code_pickles_and_foreign_files_are_refused(tmp_path):
    path = tmp_path / "evil.bin"
    torch.save({"clip.logit_scale": torch.ones([]), "hook": print}, path)  # unpickling would need a global
    with pytest.raises(ValueError, match="evil.bin"):
        load_teacher(path)
    path = tmp_path / "other.bin"
    torch.save({"encoder.weight": torch.ones(2)}, path)
    with pytest.raises(ValueError, match=r"other\.bin: not a CLIP4Clip checkpoint .*clip\.visual\.conv1\.weight"):
        load_teacher(path)


@pytest.mark.parametrize("head", HEADS)
@torch.no_grad()
def test_save_original_checkpoint_round_trip(tmp_path, checkpoints, teachers, head):
    sd, _ = checkpoints[head]
    path = tmp_path / "pytorch_model.bin.0"
    save_original_checkpoint(teachers[head], path)
    written = torch.load(path, weights_only=True)
    assert written.keys() == sd.keys()  # the original key names, nothing more
    assert all(written[k].dtype == torch.float32 and torch.equal(written[k], sd[k].float()) for k in sd)
    reloaded = load_teacher(path)
    assert reloaded.arch == teachers[head].arch
    batch = inputs()
    assert torch.equal(reloaded.similarity_logits(*batch), teachers[head].similarity_logits(*batch))


def test_save_original_checkpoint_needs_embed_dim_equal_to_text_width(tmp_path):
    arch = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 64, "layers": 1},
        "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 64, "heads": 1, "layers": 1},
        "sim_header": "meanP",
        "cross_layers": 0,
    }
    with pytest.raises(ValueError, match="embed_dim 32 and text width 64"):
        save_original_checkpoint(CLIP4Clip(arch), tmp_path / "x.bin")


@torch.no_grad()
def test_our_export_of_a_loaded_checkpoint_round_trips(tmp_path, teachers):
    path = tmp_path / "teacher.safetensors"
    save_teacher(teachers["tightTransf"], path)
    loaded = load_teacher(path)
    assert loaded.arch == teachers["tightTransf"].arch
    batch = inputs()
    assert torch.equal(loaded.similarity_logits(*batch), teachers["tightTransf"].similarity_logits(*batch))


# ---------------------------------------------------------------- 3d linear patch


@torch.no_grad()
def test_3d_patch_with_centred_kernel_equals_2d_and_padding_leaks(tmp_path, checkpoints, teachers):
    sd = dict(checkpoints["meanP"][0])  # the 2d teacher's CLIP weights plus a random temporal kernel
    sd["clip.visual.conv2.weight"] = Weights(5)(VISION_WIDTH, 3, 3, PATCH, PATCH, std=0.05, half=True)
    path = tmp_path / "pytorch_model.bin.3d"
    torch.save(sd, path)
    teacher = load_teacher(path)
    assert teacher.arch["linear_patch"] == "3d" and teacher.sim_header == "meanP"
    input_ids, attention_mask, video, mask = inputs()
    noisy = torch.where(mask[:, :, None, None, None].bool(), video, torch.randn(video.shape) * 5)
    # With a random temporal kernel, the padded frames leak into their valid neighbours, as in the original.
    leaked = teacher.similarity_logits(input_ids, attention_mask, noisy, mask)
    assert (leaked - teacher.similarity_logits(input_ids, attention_mask, video, mask)).abs().max() > 1e-3
    # conv2 = [0, conv1, 0] over time (how the original initialises a missing conv2) is the 2d patch.
    conv1 = sd["clip.visual.conv1.weight"]
    sd["clip.visual.conv2.weight"] = torch.stack([torch.zeros_like(conv1), conv1, torch.zeros_like(conv1)], dim=2)
    torch.save(sd, path)
    centred = load_teacher(path)
    torch.testing.assert_close(
        centred.similarity_logits(input_ids, attention_mask, video, mask),
        teachers["meanP"].similarity_logits(input_ids, attention_mask, video, mask),
        atol=1e-5,
        rtol=0,
    )
    save_original_checkpoint(centred, tmp_path / "again.bin")
    assert torch.load(tmp_path / "again.bin", weights_only=True).keys() == sd.keys()


# ---------------------------------------------------------------- OpenAI CLIP and open_clip


def assert_embeddings_equal_clip(teacher, clip):
    """encode_text is CLIP's normalised EOT feature; a one-frame video is CLIP's normalised image feature."""
    input_ids, attention_mask, video, _ = inputs()
    with torch.no_grad():
        text = teacher.encode_text(input_ids, attention_mask)
        frames = teacher.encode_video(video[:, :1], torch.ones(4, 1))
        ref_text = F.normalize(clip.encode_text(F.pad(input_ids, (0, CONTEXT - input_ids.shape[1]))), dim=-1)
        ref_frames = F.normalize(clip.encode_image(video[:, 0]), dim=-1)
    torch.testing.assert_close(text, ref_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(frames, ref_frames, atol=1e-6, rtol=0)


def test_openai_state_dict_is_a_zero_shot_meanP_teacher(tmp_path, checkpoints):
    sd = {k.removeprefix("clip."): v for k, v in checkpoints["meanP"][0].items()}
    # OpenAI's files also hold these three numbers, which are not weights
    sd |= {
        "input_resolution": torch.tensor(16),
        "context_length": torch.tensor(CONTEXT),
        "vocab_size": torch.tensor(VOCAB),
    }
    path = tmp_path / "ViT-tiny.pt"
    torch.save(sd, path)
    teacher = load_teacher(path)
    assert teacher.sim_header == "meanP" and teacher.arch["vision_cfg"]["image_size"] == 16
    assert_embeddings_equal_clip(teacher, reference_clip(checkpoints["meanP"][0]))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_openai_torchscript_file_is_a_zero_shot_meanP_teacher(tmp_path, checkpoints):
    clip = reference_clip(checkpoints["meanP"][0])
    del clip._buffers["attn_mask"]  # OpenAI's JIT keeps its causal mask as a plain attribute, not in the state dict
    clip.register_buffer("input_resolution", torch.tensor(16))
    with pytest.warns(FutureWarning):  # torch.jit is deprecated; OpenAI's files are still TorchScript
        traced = torch.jit.trace_module(clip, {"encode_image": (torch.zeros(1, 3, 16, 16),)})
        torch.jit.save(traced, str(tmp_path / "ViT-tiny.pt"))
    teacher = load_teacher(tmp_path / "ViT-tiny.pt")
    assert teacher.sim_header == "meanP"
    assert_embeddings_equal_clip(teacher, reference_clip(checkpoints["meanP"][0]))


@pytest.fixture(scope="module")
def open_clip_weights(tmp_path_factory):
    """A tiny open_clip model registered by config file, and its weights saved by the test: `(name, path, model)`."""
    root = tmp_path_factory.mktemp("open_clip")
    name = "clip4clip-distill-test-tiny"
    config = {
        "embed_dim": 48,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 64, "patch_size": 8},
        "text_cfg": {"context_length": CONTEXT, "vocab_size": VOCAB, "width": 64, "heads": 2, "layers": 1},
    }
    (root / f"{name}.json").write_text(json.dumps(config))
    config["vision_cfg"]["width"] = 128  # a second model the weights do not fit
    (root / f"{name}-wide.json").write_text(json.dumps(config))
    open_clip.add_model_config(root)
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    path = root / "tiny.safetensors"
    save_file(model.state_dict(), str(path))
    return name, path, model


def test_open_clip_source_is_a_zero_shot_meanP_teacher(tmp_path, open_clip_weights):
    name, path, model = open_clip_weights
    teacher = load_teacher(f"open_clip:{name}?pretrained={path}")
    assert teacher.sim_header == "meanP" and teacher.arch["open_clip_model"] == name
    assert teacher.arch["embed_dim"] == 48 and teacher.arch["vision_cfg"]["image_size"] == 16
    assert_embeddings_equal_clip(teacher, model)
    export = tmp_path / "teacher.safetensors"  # the arch rebuilds the open_clip model from its name
    save_teacher(teacher, export)
    assert_embeddings_equal_clip(load_teacher(export), model)
    with pytest.raises(ValueError, match="open_clip-built teacher"):
        save_original_checkpoint(teacher, tmp_path / "x.bin")


def test_open_clip_source_errors_name_the_problem(tmp_path, open_clip_weights):
    name, path, _ = open_clip_weights
    with pytest.raises(ValueError, match=r"expected open_clip:<MODEL>\?pretrained="):
        load_teacher(f"open_clip:{name}")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_teacher(f"open_clip:{name}?pretrained={tmp_path / 'nowhere.safetensors'}")
    with pytest.raises(ValueError, match="no open_clip model 'ViT-Nope'"):
        load_teacher(f"open_clip:ViT-Nope?pretrained={path}")
    with pytest.raises(ValueError, match=f"(?s)weights do not fit {name}-wide: .*visual.conv1.weight"):
        load_teacher(f"open_clip:{name}-wide?pretrained={path}")


def test_recipe_checks_the_open_clip_weights_file(tmp_path, open_clip_weights):
    name, path, _ = open_clip_weights
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: t\nstages: [distill]\ndata:\n  format: synthetic\n  root: " + str(tmp_path) + "\n")
    (tmp_path / "manifest.json").write_text("{}")
    source = f"open_clip:{name}?pretrained={path}"
    assert load_recipe(recipe, [f"teacher.source={source}"]).teacher.source == source
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(RecipeError, match=f"teacher.source: .*no such weights file: {missing}"):
        load_recipe(recipe, [f"teacher.source=open_clip:{name}?pretrained={missing}"])
    with pytest.raises(RecipeError, match="teacher.source: .*expected open_clip:<MODEL>"):
        load_recipe(recipe, [f"teacher.source=open_clip:{name}"])
