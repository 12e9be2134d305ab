"""Evaluation: every test clip is decoded once for both models, and the report does not depend on how many
DataLoader workers decode them."""

import pytest
import torch
from accelerate import Accelerator
from tiny import student_config

from distill.context import teacher_arch
from distill.data.config import SyntheticConfig
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import read_jsonl
from distill.data.synthetic import generate_synthetic
from distill.evaluate import encode_texts, evaluate
from distill.recipe import TeacherConfig
from students import Student
from teachers import CLIP4Clip


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
