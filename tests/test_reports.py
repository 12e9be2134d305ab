"""What a run hands out besides the weights: report.md names the gallery of every R@K it shows (validation and
test R@1 over galleries of different sizes are not a gap), and the model card's metadata holds the student's
results only, as a model hub reads it (huggingface_hub's own parser), with the teacher in the card's table."""

from __future__ import annotations

import json

import yaml
from huggingface_hub import ModelCard

from distill.evaluation.card import card_text
from distill.evaluation.evaluate import write_reports

METRIC_KEYS = ("R1", "R5", "R10", "MdR", "MnR")


def metrics(r1: float) -> dict:
    return {"R1": r1, "R5": r1 + 40.0, "R10": r1 + 55.0, "MdR": 3.0, "MnR": 4.4}


def efficiency(params: float, gflops: float) -> dict:
    parts = {"frame_encoder": params / 2, "temporal_head": 0.1, "text_tower": params / 4, "token_embedding": 0.2}
    return {
        "params_M": params,
        "params_M_parts": parts,
        "gflops_per_video": gflops,
        "gflops_per_caption": gflops / 10,
        "frames": 8,
        "resolution": 32,
    }


def report() -> dict:
    """A report as the evaluate stage writes it: 500 test videos, a validation gallery of 158."""
    curve = [float(min(100, 20 + 10 * k)) for k in range(50)]
    return {
        "name": "demo",
        "test_pairs": 500,
        "test_videos": 500,
        "teacher": {"t2v": metrics(32.0), "v2t": metrics(32.8), "t2v_reversed_R1": 6.8},
        "student": {"t2v": metrics(25.2), "v2t": metrics(23.2), "t2v_reversed_R1": 4.0},
        "efficiency": {"teacher": efficiency(9.19, 0.505), "student": efficiency(1.13, 0.033)},
        "recall_curves": {m: {"t2v": curve, "v2t": curve} for m in ("teacher", "student")},
        "validation": {"pairs": 158, "videos": 158},
    }


def test_report_md_names_the_gallery_of_test_and_validation_recall(tmp_path):
    logs = {
        "teacher_log.jsonl": [
            {"step": 1, "loss": 2.0},
            {"step": 2, "val_teacher_t2v_R1": 60.1, "val_teacher_v2t_R1": 59},
        ],
        "distill_log.jsonl": [
            {"step": 1, "val_teacher_t2v_R1": 63.3, "val_teacher_v2t_R1": 62.0, "val_student_t2v_R1": 40.0,
             "val_student_v2t_R1": 41.0},
            {"step": 2, "loss": 1.0},
            {"step": 3, "val_teacher_t2v_R1": 63.3, "val_teacher_v2t_R1": 62.0, "val_student_t2v_R1": 51.9,
             "val_student_v2t_R1": 50.5},
        ],
    }  # fmt: skip
    for name, records in logs.items():
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    write_reports(report(), tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Test split: 500 captions of 500 videos, a gallery of 500 (chance R@1 0.2%)" in text
    assert "## Text to video (test, gallery of 500)" in text and "## Video to text (test, gallery of 500)" in text
    assert "## Validation (the kept epoch, gallery of 158)" in text and "158 captions of 158 videos" in text
    # the last validated epoch of each stage, teacher and student
    assert "| teacher | teacher | 60.1 | 59.0 |" in text
    assert "| distill | teacher | 63.3 | 62.0 |" in text and "| distill | student | 51.9 | 50.5 |" in text
    assert "| distill | student | 40.0 |" not in text


def test_report_md_shows_the_validation_of_the_kept_epoch(tmp_path):
    """Under the stopping rule the best epoch's weights are evaluated and shipped: the validation table shows
    that epoch's R@1, not the last one's."""
    records = [
        {"step": 1, "val_student_t2v_R1": 55.0, "val_student_v2t_R1": 54.0},
        {"step": 2, "val_student_t2v_R1": 51.9, "val_student_v2t_R1": 50.5},
    ]
    (tmp_path / "distill_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    kept = {"rule": "patience 1", "steps": 2, "max_steps": 4, "epochs": 2, "stopped": "patience", "val_R1": 54.5}
    kept.update(best_epoch=1, best_step=1, exported="best")
    write_reports({**report(), "schedule": {"distill": kept}}, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| distill | student | 55.0 | 54.0 |" in text and "| distill | student | 51.9 |" not in text
    assert "best validation R@1 (mean of t2v and v2t) 54.5 at epoch 1 (step 1)" in text


def test_report_md_without_validation_shows_test_only(tmp_path):
    plain = report()
    del plain["validation"]
    write_reports(plain, tmp_path)
    assert "## Validation" not in (tmp_path / "report.md").read_text()


def test_model_card_metadata_lists_the_students_results_only():
    r = report()
    text = card_text("demo-student", "synthetic", r, {"max_frames": 8, "image_size": 32, "framerate": 1})
    card = ModelCard(text)  # huggingface_hub's parser: the front matter as a hub reads it (no network)
    results = card.data.eval_results
    assert len(results) == 2 * len(METRIC_KEYS)
    assert {(e.task_name, e.metric_name, e.metric_value) for e in results} == {
        (task, f"{direction} {key}", r["student"][direction][key])
        for direction, task in (("t2v", "Text-to-video retrieval"), ("v2t", "Video-to-text retrieval"))
        for key in METRIC_KEYS
    }
    assert all(e.dataset_split == "test" and e.dataset_name == "synthetic" for e in results)
    assert card.data.model_name == "demo-student"
    header = yaml.safe_load(text.split("---")[1])
    assert "teacher" not in json.dumps(header["model-index"])
    # the teacher is in the card's table, beside the student
    assert "| teacher | t2v | 32.0 | 72.0 | 87.0 | 3.0 | 4.4 |" in text
    assert "| student | t2v | 25.2 | 65.2 | 80.2 | 3.0 | 4.4 |" in text
    assert "The gallery holds 500 videos (chance R@1 0.2%)" in text
