"""The shipped recipe for real data, recipes/msrvtt.yaml, run as a user runs it: on an MSR-VTT tree of real
.mp4 files (CLIP4Clip's annotation files) and an original CLIP4Clip checkpoint built from random weights,
through the CLI. Only its paths, the student's frame encoder (16 px, one block), the steps and the worker
count are overridden; everything else (bf16 mixed precision, frame shards, teacher cache, 12 frames,
the student's widths) is the recipe's.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_teacher_loading import original_checkpoint

from distill.core.config import RecipeError
from distill.data.synthetic import write_mp4
from distill.data.video import read_clip
from distill.evaluation.metrics import retrieval_metrics
from distill.prepare import main as prepare_main
from distill.recipe import load_recipe
from students import load_student
from teachers import load_teacher, tokenize

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "msrvtt.yaml"
TRAIN = {f"video{i}": [f"clip {i} shows something", f"a caption of clip {i}"] for i in range(6)}
TEST = {
    f"video{i}": caption
    for i, caption in enumerate(
        [
            "the first test clip",
            "a second one",
            "number three",
            "a fourth clip",
            "people dance",
            "a cat sleeps on a sofa",
            "someone is cooking pasta",
            "the last one",
        ],
        start=6,
    )
}


@pytest.fixture(scope="module")
def msrvtt(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("msrvtt")
    ann, videos = root / "msrvtt_data", root / "videos"
    ann.mkdir()
    videos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(14):  # 3 to 14 s at 2 frames/s: some clips fill the 12 frames at 1 frame/s, some are padded
        frames = rng.integers(0, 256, size=(2 * (3 + (i * 5) % 12), 32, 32, 3), dtype=np.uint8)
        write_mp4(videos / f"video{i}.mp4", frames, fps=2)
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in TRAIN))
    sentences = [
        {"video_id": v, "caption": c, "sen_id": k}
        for k, (v, c) in enumerate((v, c) for v, captions in TRAIN.items() for c in captions)
    ]
    (ann / "MSRVTT_data.json").write_text(
        json.dumps({"videos": [{"video_id": f"video{i}"} for i in range(14)], "sentences": sentences})
    )
    (ann / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"ret{k},msr{k},{v},{c}\n" for k, (v, c) in enumerate(TEST.items()))
    )
    checkpoint = root / "ckpt" / "pytorch_model.bin.4"
    checkpoint.parent.mkdir()
    torch.save(original_checkpoint("seqTransf"), checkpoint)
    return {"annotations": ann, "videos": videos, "checkpoint": checkpoint, "root": root}


def paths(msrvtt) -> list[str]:
    return [
        f"data.annotations={msrvtt['annotations']}",
        f"data.video_root={msrvtt['videos']}",
        f"teacher.source={msrvtt['checkpoint']}",
    ]


def test_the_recipe_names_each_path_it_lacks(msrvtt):
    """The recipe ships with placeholder paths; each one missing stops the run naming its key."""
    given = paths(msrvtt)
    for key, message in (
        ("data.annotations", "data.annotations: no such folder: /data/msrvtt_data"),
        ("data.video_root", "data.video_root: no such folder: /data/MSRVTT/videos"),
        ("teacher.source", "teacher.source: no such file: /ckpt/msrvtt/pytorch_model.bin.4"),
    ):
        with pytest.raises(RecipeError, match=message):
            load_recipe(RECIPE, [p for p in given if not p.startswith(key)])
    recipe = load_recipe(RECIPE, given)
    assert recipe.mixed_precision == "bf16" and recipe.data.format == "msrvtt"
    assert recipe.stages == ["data", "prepare", "teacher", "cache", "distill", "evaluate", "export"]


def test_checking_the_data_needs_only_the_data_paths(msrvtt, capsys):
    """`python -m distill.prepare --check` reads only the data: the teacher's placeholder path may stay."""
    data = [p for p in paths(msrvtt) if p.startswith("data.")]
    assert prepare_main(["--check", str(RECIPE), *data]) == 0
    assert "train: 12 pairs of 6 videos are usable; 0 problems" in capsys.readouterr().out
    assert prepare_main(["--check", str(RECIPE), data[0]]) == 2  # the videos are data
    assert "error: data.video_root: no such folder: /data/MSRVTT/videos" in capsys.readouterr().err


@pytest.fixture(scope="module")
def run(msrvtt) -> Path:
    out = msrvtt["root"] / "run"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "distill" / "run.py"),
            str(RECIPE),
            *paths(msrvtt),
            f"output_dir={out}",
            "student.image_size=16",
            "student.backbone_kwargs={img_size: 16, patch_size: 8, depth: 1}",
            "train.batch_size=4",
            "train.max_steps=2",
            "train.patience=0",  # the recipe's rule reads validation; 6 videos hold none out at val_fraction 0.05
            "data.num_workers=0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=msrvtt["root"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (out / "stdout.txt").write_text(done.stdout)
    return out


def test_every_stage_runs_on_shards_and_the_cache(run):
    log = (run / "stdout.txt").read_text()
    assert "data: 12 train pairs" in log and "8 test pairs" in log
    assert "distill: teacher outputs from" in log
    manifest = json.loads((run / "frames" / "manifest.json").read_text())
    assert manifest["encoding"] == "raw"  # auto: both views are 16 px
    assert json.loads((run / "teacher_cache" / "manifest.json").read_text())["complete"]
    last = json.loads((run / "distill_log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 2 and last["kl_loss"] > 0 and last["feature_loss"] > 0


def test_the_report_holds_the_original_teacher_numbers(run, msrvtt):
    """The teacher's metrics in the report equal those of the checkpoint scored here on the 1k-A style test
    rows, read straight from the videos with CLIP4Clip's sampling (12 frames at 1 frame/s, 16 px)."""
    teacher = load_teacher(msrvtt["checkpoint"])
    clips = [read_clip(msrvtt["videos"] / f"{v}.mp4", max_frames=12, size=16) for v in TEST]
    assert [int(mask.sum()) for _, mask in clips] == [9, 12, 7, 12, 5, 10, 3, 8]  # short clips are padded
    video, mask = torch.stack([c for c, _ in clips]), torch.stack([m for _, m in clips])
    ids, attention = tokenize(list(TEST.values()), 32)
    with torch.no_grad():
        sim = teacher.similarity_logits(ids, attention, video, mask)
    report = json.loads((run / "report.json").read_text())
    assert report["test_pairs"] == 8
    assert report["teacher"]["t2v"] == pytest.approx(retrieval_metrics(sim))
    assert report["teacher"]["v2t"] == pytest.approx(retrieval_metrics(sim.T))


def test_the_exported_student_is_the_recipes(run):
    student = load_student(run / "student.safetensors")
    c = student.config
    assert (c.backbone, c.max_frames, c.embed_dim, c.text_width, c.text_layers, c.temporal_layers) == (
        "vit_tiny_patch16_224",
        12,
        512,
        384,
        6,
        2,
    )
    ids, attention = tokenize(list(TEST.values()), 32)
    assert student.encode_text(ids, attention).shape == (8, 512)
