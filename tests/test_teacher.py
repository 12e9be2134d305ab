"""The CLIP4Clip teacher against hand-written references from the spec (sections 1.2-1.4, 2, 8).

Tiny random models (16 px frames, one-layer towers) so every check is exact-ish and runs in milliseconds.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from teachers import CLIP4Clip, load_teacher, save_teacher, tokenize
from teachers.archs import clip4clip_arch

SOT, EOT = 49406, 49407
CONTEXT = 16  # the tiny teacher's text context length (max_words)
T = 4  # frames per video


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_arch(sim_header: str) -> dict:
    return clip4clip_arch("test_tiny", sim_header, context_length=CONTEXT)


def make_teacher(sim_header: str, seed: int = 0) -> CLIP4Clip:
    torch.manual_seed(seed)
    return CLIP4Clip(tiny_arch(sim_header)).eval()


@pytest.fixture(scope="module")
def teachers() -> dict[str, CLIP4Clip]:
    """One teacher per head, all sharing the same CLIP weights."""
    models = {name: make_teacher(name, seed=i) for i, name in enumerate(("meanP", "seqLSTM", "seqTransf"))}
    for name in ("seqLSTM", "seqTransf"):
        models[name].clip.load_state_dict(models["meanP"].clip.state_dict())
    return models


@pytest.fixture(scope="module")
def batch():
    """Three videos with 4, 2 and 1 valid frames (a prefix); padded frames hold zero pixels."""
    g = torch.Generator().manual_seed(1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    video = torch.randn(3, T, 3, 16, 16, generator=g) * mask[:, :, None, None, None]
    input_ids, attention_mask = tokenize(["a dog runs on the beach", "Cooking pasta!", "a man sings"], CONTEXT)
    return input_ids, attention_mask, video, mask


def with_noisy_padding(video, mask, seed=2):
    """The same videos with large random pixels in the padded frames."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(video.shape, generator=g) * 5
    return torch.where(mask[:, :, None, None, None].bool(), video, noise)


def per_frame_clip(clip, video):
    """Unnormalised CLIP features `[B, T, D]`, one `clip.encode_image` call per frame."""
    return torch.stack(
        [
            torch.cat([clip.encode_image(video[b, t][None]) for t in range(video.shape[1])])
            for b in range(video.shape[0])
        ]
    )


def loose_tail(frames, mask):
    """CLIP4Clip's `_loose_similarity` video side: per-frame L2, masked mean (divisor >= 1), L2 again."""
    v = frames / frames.norm(dim=-1, keepdim=True)
    m = mask.float().unsqueeze(-1)
    v = (v * m).sum(1) / m.sum(1).clamp(min=1.0)
    return v / v.norm(dim=-1, keepdim=True)


def close(a, b, atol=1e-6):
    torch.testing.assert_close(a, b, atol=atol, rtol=0)


# ---------------------------------------------------------------- meanP


@torch.no_grad()
def test_meanP_is_masked_mean_of_normalised_frames(teachers, batch):
    teacher = teachers["meanP"]
    _, _, video, mask = batch
    reference = loose_tail(per_frame_clip(teacher.clip, video), mask)
    close(teacher.encode_video(video, mask), reference, atol=1e-5)


@pytest.mark.parametrize("head", ["meanP", "seqLSTM", "seqTransf"])
@torch.no_grad()
def test_padded_frames_do_not_matter(teachers, batch, head):
    teacher = teachers[head]
    _, _, video, mask = batch
    out = teacher.encode_video(video, mask)
    close(teacher.encode_video(with_noisy_padding(video, mask), mask), out)
    # A padded video equals the same video cut to its valid frames (valid frames are a prefix).
    for b, n in enumerate(mask.sum(1).tolist()):
        close(teacher.encode_video(video[b : b + 1, :n], mask[b : b + 1, :n]), out[b : b + 1], atol=1e-5)
    assert out.shape == (3, 128)
    close(out.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("log_scale, scale", [(math.log(10.0), 10.0), (math.log(1000.0), 100.0)])
@torch.no_grad()
def test_similarity_logits_scaled_cosine_clamped_at_100(batch, log_scale, scale):
    teacher = make_teacher("meanP")
    teacher.clip.logit_scale.fill_(log_scale)
    input_ids, attention_mask, video, mask = batch
    text, vid = teacher.encode_text(input_ids, attention_mask), teacher.encode_video(video, mask)
    logits = teacher.similarity_logits(input_ids, attention_mask, video, mask)
    assert logits.shape == (3, 3)  # text rows, video columns
    close(logits, scale * text @ vid.T, atol=1e-4)
    close(teacher.logit_scale(), torch.tensor(scale), atol=1e-4)
    out = teacher(input_ids, attention_mask, video, mask)
    assert set(out) == {"text_features", "video_features", "logit_scale"}
    close(out["text_features"], text)
    close(out["video_features"], vid)


# ---------------------------------------------------------------- seqTransf


def silence_transformer_clip(teacher: CLIP4Clip) -> None:
    """Zeroes every block's attention out_proj and MLP c_proj, so each residual block is the identity."""
    for block in teacher.transformerClip.resblocks:
        for linear in (block.attn.out_proj, block.mlp.c_proj):
            linear.weight.zero_()
            linear.bias.zero_()


@torch.no_grad()
def test_seqTransf_is_transformer_of_positioned_frames_plus_raw_frames(teachers, batch):
    _, _, video, mask = batch
    teacher = make_teacher("seqTransf")
    teacher.clip.load_state_dict(teachers["meanP"].clip.state_dict())
    silence_transformer_clip(teacher)
    x = per_frame_clip(teacher.clip, video)
    pos = teacher.frame_position_embeddings.weight[:T]
    # identity transformer: out = (x + pos) + x; the residual takes the frames without positions
    close(teacher.encode_video(video, mask), loose_tail(2 * x + pos, mask), atol=1e-5)
    teacher.frame_position_embeddings.weight.zero_()
    close(teacher.encode_video(video, mask), teachers["meanP"].encode_video(video, mask), atol=1e-5)


@torch.no_grad()
def test_seqTransf_temporal_head_depends_on_frames_and_their_order(teachers, batch):
    teacher = teachers["seqTransf"]
    _, _, video, mask = batch
    x = teacher.frame_features(video)
    out = teacher.temporal(x, mask)
    assert out.shape == x.shape
    assert (out - x).abs().max() > 1e-2  # the head does something
    full = torch.ones_like(mask)
    reversed_out = teacher.temporal(x.flip(1), full).flip(1)
    assert (reversed_out - teacher.temporal(x, full)).abs().max() > 1e-3  # positions make order matter


def test_seqTransf_blocks_follow_clip4clip_module_cross(teachers):
    teacher = teachers["seqTransf"]
    blocks = teacher.transformerClip.resblocks
    assert len(blocks) == 2
    for block in blocks:
        assert block.ln_1.eps == 1e-12 and block.ln_2.eps == 1e-12  # BERT LayerNorm in module_cross
        assert isinstance(block.mlp.gelu, QuickGELU)
        assert block.attn.num_heads == 128 // 64
    assert teacher.frame_position_embeddings.weight.shape == (CONTEXT, 128)
    assert isinstance(teacher.clip.transformer.resblocks[0].mlp.gelu, QuickGELU)  # OpenAI CLIP activation


# ---------------------------------------------------------------- seqLSTM


@pytest.mark.parametrize(
    "mask", [[[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], [[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]]]
)
@torch.no_grad()
def test_seqLSTM_equals_packed_lstm_reference(teachers, batch, mask):
    teacher = teachers["seqLSTM"]
    mask = torch.tensor(mask)
    video = batch[2] * mask[:, :, None, None, None]
    visual_output = per_frame_clip(teacher.clip, video)
    # CLIP4Clip's modeling.py, seqLSTM branch of _loose_similarity
    packed = pack_padded_sequence(visual_output, mask.sum(-1).cpu(), batch_first=True, enforce_sorted=False)
    out, _ = teacher.lstm_visual(packed)
    out, _ = pad_packed_sequence(out, batch_first=True)
    assert out.shape[1] == mask.sum(1).max()  # with a shorter longest video the fill-in below matters
    out = torch.cat((out, visual_output[:, out.size(1) :, ...].contiguous()), dim=1)
    out = out + visual_output
    close(teacher.encode_video(video, mask), loose_tail(out, mask), atol=1e-5)


@torch.no_grad()
def test_seqLSTM_ignores_frame_position_embeddings(batch):
    teacher = make_teacher("seqLSTM")
    _, _, video, mask = batch
    before = teacher.encode_video(video, mask)
    teacher.frame_position_embeddings.weight.zero_()
    close(teacher.encode_video(video, mask), before)


def test_seqLSTM_under_bf16_runs_on_a_cpu_without_native_bf16():
    """oneDNN has no bf16 LSTM primitive without native bf16 (AVX2-only CPUs): there the LSTM leaves the
    autocast and runs in float32. ONEDNN_MAX_CPU_ISA=AVX2 makes any x86-64 CPU such a CPU for oneDNN."""
    script = f"""
import sys, torch
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_teacher import make_teacher
assert not torch.ops.mkldnn._is_mkldnn_bf16_supported()
teacher = make_teacher("seqLSTM")
video, mask = torch.randn(2, {T}, 3, 16, 16), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
with torch.no_grad():
    exact = teacher.encode_video(video, mask)
    teacher.precision = "bf16"
    low = teacher.encode_video(video, mask)
print((low - exact).abs().max().item())
"""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # bf16 really ran in the frame encoder (an error), and stays near float32 (unit vectors: 0.05 is 5%).
    assert 0 < float(done.stdout) < 0.05


# ---------------------------------------------------------------- text


@torch.no_grad()
def test_encode_text_padding_after_eot_is_invisible(teachers):
    teacher = teachers["meanP"]
    ids, _ = tokenize(["a cat on a mat", "two people dancing in the rain"], max_words=10)
    out = teacher.encode_text(ids)
    close(teacher.encode_text(F.pad(ids, (0, CONTEXT - 10))), out)
    g = torch.Generator().manual_seed(3)
    junk = torch.randint(1, SOT, ids.shape, generator=g)  # any ids below EOT after the EOT token
    after_eot = torch.arange(10) > (ids == EOT).int().argmax(1, keepdim=True)
    close(teacher.encode_text(torch.where(after_eot, junk, ids)), out)


@torch.no_grad()
def test_encode_text_is_open_clip_eot_feature_normalised(teachers):
    teacher = teachers["meanP"]
    clip = teacher.clip
    ids, mask = tokenize(["a cat on a mat", "Two people, dancing in the rain!"], max_words=10)
    out = teacher.encode_text(ids, mask)
    padded = F.pad(ids, (0, CONTEXT - 10))
    close(out, F.normalize(clip.encode_text(padded), dim=-1))
    # by hand, as CLIP4Clip's encode_text: embeddings + positions, causal transformer, ln_final, EOT row
    x = clip.token_embedding(padded) + clip.positional_embedding
    causal = torch.full((CONTEXT, CONTEXT), float("-inf")).triu(1)
    x = clip.ln_final(clip.transformer(x, attn_mask=causal))
    eot = x[torch.arange(2), (padded == EOT).int().argmax(1)] @ clip.text_projection
    close(out, eot / eot.norm(dim=-1, keepdim=True), atol=1e-5)
    assert out.shape == (2, 128) and out.dtype == torch.float32


def test_text_tower_runs_at_the_ids_length_unless_its_pooling_needs_all_positions(teachers):
    """CLIP4Clip runs the text tower at max_words, not at the context length: the cost follows the ids'
    length (equal outputs: the test above). A tower that pools another way is fed padded ids as before."""
    from distill.evaluation.evaluate import count_gflops

    teacher = teachers["meanP"]
    short, _ = tokenize(["a cat on a mat"], max_words=8)
    full = F.pad(short, (0, CONTEXT - 8))
    ratio = count_gflops(teacher.text_features, short) / count_gflops(teacher.text_features, full)
    assert 0.4 < ratio < 0.55  # 8 of 16 tokens (the projection of the EOT row does not scale)
    arch = tiny_arch("meanP")
    arch["text_cfg"] = {**arch["text_cfg"], "pool_type": "last"}
    torch.manual_seed(0)
    last = CLIP4Clip(arch).eval()
    with torch.no_grad():
        close(last.text_features(short), last.clip.encode_text(full))


@torch.no_grad()
def test_encode_text_ignores_attention_mask(teachers):
    teacher = teachers["seqTransf"]
    ids, mask = tokenize(["a cat on a mat", "a dog"], max_words=CONTEXT)
    out = teacher.encode_text(ids, mask)
    close(teacher.encode_text(ids), out)
    close(teacher.encode_text(ids, torch.ones_like(mask)), out)
    close(teacher.encode_text(ids, torch.zeros_like(mask)), out)


def test_encode_text_rejects_ids_wider_than_the_context(teachers):
    ids, _ = tokenize([" ".join(["word"] * 30)], max_words=CONTEXT + 4)  # cropping would drop the EOT
    with pytest.raises(ValueError, match=f"context length {CONTEXT}"):
        teachers["meanP"].encode_text(ids)


# ---------------------------------------------------------------- state dict layout


def test_state_dict_keys_follow_original_layout(teachers):
    prefixes = ("clip.", "frame_position_embeddings.", "transformerClip.resblocks.", "lstm_visual.")
    for head, teacher in teachers.items():
        keys = set(teacher.state_dict())
        assert all(k.startswith(prefixes) for k in keys), sorted(k for k in keys if not k.startswith(prefixes))
        for key in (
            "clip.visual.conv1.weight",
            "clip.visual.class_embedding",
            "clip.visual.positional_embedding",
            "clip.visual.proj",
            "clip.visual.ln_post.weight",
            "clip.visual.transformer.resblocks.0.attn.in_proj_weight",
            "clip.transformer.resblocks.0.attn.in_proj_weight",
            "clip.transformer.resblocks.0.mlp.c_proj.bias",
            "clip.token_embedding.weight",
            "clip.positional_embedding",
            "clip.text_projection",
            "clip.ln_final.weight",
            "clip.logit_scale",
        ):
            assert key in keys, (head, key)
    sd = teachers["seqTransf"].state_dict()
    assert sd["clip.visual.conv1.weight"].shape == (64, 3, 8, 8)
    assert sd["clip.text_projection"].shape == (128, 128)
    for key in (
        "frame_position_embeddings.weight",
        "transformerClip.resblocks.0.mlp.c_fc.weight",
        "transformerClip.resblocks.1.attn.in_proj_weight",
        "transformerClip.resblocks.1.ln_2.bias",
    ):
        assert key in sd, key
    assert not any(k.startswith("lstm_visual.") for k in sd)
    sd = teachers["seqLSTM"].state_dict()
    for key in ("weight_ih_l0", "weight_hh_l0"):
        assert sd[f"lstm_visual.{key}"].shape == (4 * 128, 128)
    for key in ("bias_ih_l0", "bias_hh_l0"):
        assert sd[f"lstm_visual.{key}"].shape == (4 * 128,)
    assert "frame_position_embeddings.weight" in sd
    assert not any(k.startswith("transformerClip.") for k in sd)
    assert not any(
        k.startswith(("frame_position_embeddings.", "lstm_visual.", "transformerClip."))
        for k in teachers["meanP"].state_dict()
    )


def test_unknown_sim_header_is_an_error():
    with pytest.raises(ValueError, match="'seqGRU' is not one of .*tightTransf"):
        CLIP4Clip(tiny_arch("seqGRU"))


# ---------------------------------------------------------------- export and loading


@torch.no_grad()
def test_save_load_round_trip(tmp_path, batch):
    teacher = make_teacher("seqTransf")
    path = tmp_path / "teacher.safetensors"
    save_teacher(teacher, path)
    loaded = load_teacher(path)
    assert loaded.sim_header == "seqTransf" and loaded.arch == teacher.arch
    assert not loaded.training and not any(m.training for m in loaded.modules())
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in loaded.parameters())
    assert all(p.device.type == "cpu" for p in loaded.parameters())
    # frozen like the loaded one: requires_grad picks the attention kernel, and bit-equality needs the same one
    teacher.requires_grad_(False)
    assert torch.equal(loaded.similarity_logits(*batch), teacher.similarity_logits(*batch))


def test_load_teacher_missing_file(tmp_path):
    path = tmp_path / "nowhere.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        load_teacher(path)


def test_load_teacher_rejects_other_safetensors(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"format": "something-else"})
    with pytest.raises(ValueError, match="weights.safetensors"):
        load_teacher(path)


def test_load_teacher_rejects_corrupt_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="broken.safetensors"):
        load_teacher(path)


@torch.no_grad()
def test_load_teacher_reads_our_state_dict_as_an_original_checkpoint(tmp_path, teachers, batch):
    path = tmp_path / "pytorch_model.bin.0"
    torch.save(teachers["seqTransf"].state_dict(), path)  # our keys are the original layout
    loaded = load_teacher(path)
    assert loaded.sim_header == "seqTransf"
    teachers["seqTransf"].requires_grad_(False)
    close(loaded.similarity_logits(*batch), teachers["seqTransf"].similarity_logits(*batch))


def test_load_teacher_reports_mis_shaped_tensor(tmp_path, teachers):
    good = tmp_path / "good.safetensors"
    save_teacher(teachers["meanP"], good)
    with safe_open(str(good), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["format"] == "clip4clip-distill/teacher"
    assert json.loads(metadata["arch"]) == teachers["meanP"].arch
    tensors = load_file(str(good))
    tensors["clip.visual.proj"] = torch.zeros(64, 7)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(ValueError, match=r"clip\.visual\.proj") as error:
        load_teacher(bad)
    assert "bad.safetensors" in str(error.value)


# ---------------------------------------------------------------- tokenizer


@functools.lru_cache(maxsize=1)
def bpe() -> SimpleTokenizer:
    return SimpleTokenizer()


def reference_ids(caption: str, max_words: int) -> list[int]:
    """CLIP4Clip's dataloader: [SOT] + at most max_words-2 BPE pieces + [EOT], zero padding."""
    pieces = bpe().encode(caption)[: max_words - 2]
    ids = [SOT, *pieces, EOT]
    return ids + [0] * (max_words - len(ids))


def test_tokenize_known_ids():
    ids, mask = tokenize(["a photo of a cat"], max_words=10)
    assert ids.tolist() == [[SOT, 320, 1125, 539, 320, 2368, EOT, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 1, 1, 1, 0, 0, 0]]
    assert ids.dtype == torch.int64 and mask.dtype == torch.int64


CAPTIONS = [
    "A man is playing a guitar.",
    "Hello, World!!! (really?) -- yes; #1 @home",
    "Café naïve résumé: crème brûlée 😀 in Zürich",
    "  multiple   spaces\tand\nnewlines  ",
    "Tom &amp; Jerry's fight",
    "",
]


@pytest.mark.parametrize("max_words", [8, 32])
def test_tokenize_matches_clip_bpe_truncated_like_clip4clip(max_words):
    ids, mask = tokenize(CAPTIONS, max_words=max_words)
    assert ids.shape == mask.shape == (len(CAPTIONS), max_words)
    for row, caption in enumerate(CAPTIONS):
        assert ids[row].tolist() == reference_ids(caption, max_words), caption
        eot = ids[row].tolist().index(EOT)
        assert mask[row].tolist() == [1] * (eot + 1) + [0] * (max_words - eot - 1)
        assert ids[row, 0] == SOT


def test_tokenize_lowercases():
    upper, _ = tokenize(["A MAN IS PLAYING A GUITAR"])
    lower, _ = tokenize(["a man is playing a guitar"])
    assert torch.equal(upper, lower)


def test_tokenize_cuts_long_captions_with_eot_last():
    caption = " ".join(["word"] * 50 + ["extraordinarily"] * 50)
    pieces = bpe().encode(caption)
    assert len(pieces) > 77
    for max_words in (5, 12, 32, 77):
        ids, mask = tokenize([caption], max_words=max_words)
        assert ids.shape == (1, max_words)
        assert ids[0, 0] == SOT and ids[0, -1] == EOT
        assert ids[0, 1:-1].tolist() == pieces[: max_words - 2]
        assert mask.sum() == max_words
        assert (ids[0] == EOT).sum() == 1
