"""Evaluation: every test clip is decoded once for both models, and the report does not depend on how many
DataLoader workers decode them."""

import pytest
import torch
from accelerate import Accelerator
from tiny import student_config

from distill.core.schema import SyntheticConfig, TeacherConfig
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import read_jsonl
from distill.data.synthetic import generate_synthetic
from distill.evaluation.evaluate import encode_texts, evaluate
from students import Student
from teachers import CLIP4Clip
from teachers.archs import clip4clip_arch, teacher_arch


@pytest.fixture(scope="module")
def test_pairs(tmp_path_factory) -> list[tuple[str, str]]:
    """10 captions of 5 clips, every two consecutive captions sharing a video (the multi-sentence metrics)."""
    root = generate_synthetic(
        tmp_path_factory.mktemp("evaluate") / "data",
        SyntheticConfig(num_train=2, num_test=10, size=32, fps=4, seconds=4, seed=3),
    )
    pairs = read_jsonl(root / "test.jsonl", root, root).pairs
    return [(pairs[i - i % 2].video, pair.caption) for i, pair in enumerate(pairs)]


class CountingDataset(VideoTextDataset):
    """Counts the clips it decodes (nothing is kept: every read decodes)."""

    def frames(self, index: int):
        self.reads = getattr(self, "reads", 0) + 1
        return super().frames(index)


def tiny_models() -> dict:
    torch.manual_seed(0)
    teacher = CLIP4Clip(
        teacher_arch(
            TeacherConfig(
                max_frames=4,
                image_size=32,
                vision_width=64,
                vision_layers=1,
                text_width=64,
                text_layers=1,
                cross_layers=1,
            ),
            max_words=16,
        )
    )
    config = student_config()
    student = Student(config, max_words=16)
    return {"teacher": teacher.eval(), "student": student.eval()}


def test_each_clip_is_decoded_once_for_both_models(test_pairs, one_thread):
    dataset = CountingDataset(test_pairs, {"teacher": View(4, 32), "student": View(3, 16)}, max_words=16)
    report = evaluate(tiny_models(), dataset, batch_size=2, accelerator=Accelerator(cpu=True))
    assert report["test_videos"] == 5
    assert dataset.reads == 5 + 2  # the 5 videos, and one clip for each model's cost count


def test_workers_give_the_same_report(test_pairs, one_thread):
    models = tiny_models()
    reports, decoded_here = [], []
    for workers in (0, 2):
        # keep_decoded shows where clips were decoded: each worker process keeps its own.
        dataset = VideoTextDataset(
            test_pairs, {"teacher": View(4, 32), "student": View(3, 16)}, max_words=16, keep_decoded=True
        )
        reports.append(evaluate(models, dataset, batch_size=2, accelerator=Accelerator(cpu=True), num_workers=workers))
        decoded_here.append(len(dataset.decoded))
    assert decoded_here[0] == 5 and decoded_here[1] < 5  # with workers, only the cost count's clip decodes here
    assert reports[0]["test_pairs"] == 10 and reports[0]["test_videos"] == 5
    for name in models:
        assert reports[0][name] == reports[1][name]
        assert set(reports[0][name]["t2v"]) == {"R1", "R5", "R10", "MdR", "MnR"}
        assert 1 <= reports[0][name]["t2v"]["MnR"] <= 5


def test_captions_are_encoded_under_the_runs_mixed_precision(test_pairs, one_thread, bf16):
    """As the videos are (`accelerator.autocast()`): a bf16 run ranks bf16 captions against bf16 videos."""
    student = tiny_models()["student"]
    dataset = VideoTextDataset(test_pairs, {"student": View(3, 16)}, max_words=16)
    accelerator = Accelerator(cpu=True, mixed_precision=bf16)
    text = encode_texts(student, dataset, batch_size=4, accelerator=accelerator)["text_features"]
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = student.encode_text(dataset.input_ids, dataset.attention_mask)
        exact = student.encode_text(dataset.input_ids, dataset.attention_mask)
    # Same computation on the same rows (batching splits rows, which a transformer treats independently).
    torch.testing.assert_close(text, low.float(), rtol=0, atol=0)
    assert not torch.equal(text, exact)


def vit_gflops(frames: int, *, image: int, patch: int, width: int, layers: int, embed: int) -> float:
    """A CLIP ViT tower's forward GFLOPs on `frames` frames, by hand: patch convolution, per block the qkv,
    scores, weighted sum, output projection and 4x MLP matmuls, and the projection of the class token."""
    patches = (image // patch) ** 2
    tokens = patches + 1
    conv = 2 * 3 * patch * patch * width * patches
    block = 2 * tokens * width * 3 * width + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width
    block += 2 * 2 * tokens * width * 4 * width
    return frames * (conv + layers * block + 2 * width * embed) / 1e9


@pytest.mark.parametrize("frozen", [False, True])
def test_gflops_count_a_frozen_teacher_as_a_trainable_one_and_as_by_hand(frozen):
    """A frozen eval-mode model takes nn.MultiheadAttention's fast path, which FlopCounterMode cannot see
    into: count_gflops turns it off. The hand count is of the same ops, so equal up to float rounding."""
    from distill.evaluation.evaluate import count_gflops

    torch.manual_seed(0)
    video, mask = torch.randn(1, 4, 3, 16, 16), torch.ones(1, 4, dtype=torch.long)
    for head in ("meanP", "seqTransf"):
        model = CLIP4Clip(clip4clip_arch("test_tiny", head)).eval()
        if frozen:
            model.requires_grad_(False)
        counted = count_gflops(model.encode_video, video, mask)
        frames = vit_gflops(4, image=16, patch=8, width=64, layers=1, embed=128)
        if head == "meanP":  # a mean of frame features: no multiply-adds
            assert counted == pytest.approx(frames, rel=1e-9)
        else:  # two 128-wide layers over the 4 frame tokens
            tokens, w = 4, 128
            layer = (
                2 * tokens * w * 3 * w + 2 * 2 * tokens * tokens * w + 2 * tokens * w * w + 2 * 2 * tokens * w * 4 * w
            )
            assert counted == pytest.approx(frames + 2 * layer / 1e9, rel=1e-9)


def test_parameter_parts_add_up_to_all_but_the_scales():
    from distill.evaluation.evaluate import parameter_parts

    for model in (
        CLIP4Clip(clip4clip_arch("test_tiny", "seqTransf")),
        CLIP4Clip(clip4clip_arch("test_tiny", "seqLSTM")),
        CLIP4Clip(clip4clip_arch("test_tiny", "tightTransf")),
        Student(student_config(), max_words=8),
    ):
        parts = parameter_parts(model)
        assert list(parts) == ["token_embedding", "text_tower", "frame_encoder", "temporal_head"]
        total = sum(p.numel() for p in model.parameters()) / 1e6
        assert sum(parts.values()) == pytest.approx(total - 1e-6, abs=1e-9)  # one logit scale in no part
        assert parts["token_embedding"] == model_vocab(model) / 1e6 and all(parts.values())


def model_vocab(model) -> int:
    text = model.clip if isinstance(model, CLIP4Clip) else model.text
    return text.token_embedding.weight.numel()
