"""The whole pipeline through the real command line, at tiny sizes: data, teacher, distill, evaluate,
export; reuse of the data and the teacher; resume; reload of the exported student in a new process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tiny import TINY

from distill.retrieval.encoders import load_encoder
from students import load_student, read_metadata
from teachers import load_teacher, tokenize
from teachers.export import teacher_sha256

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, launcher: list[str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf_home")}
    command = [*(launcher or [sys.executable]), str(REPO / "distill" / "run.py"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def accelerate_launch() -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "1",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """One tiny run of recipes/demo.yaml through `accelerate launch`, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("demo")
    done = run_cli(
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={tmp / 'data'}",
        f"output_dir={tmp / 'run'}",
        "train.checkpoint_every=2",
        *TINY,
        launcher=accelerate_launch(),
        cwd=tmp,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report.md: {tmp / 'run' / 'report.md'}" in done.stdout
    return tmp


def test_demo_writes_run_folder_and_report(demo):
    run = demo / "run"
    for name in (
        "recipe.yaml",
        "teacher.safetensors",
        "student.safetensors",
        "report.json",
        "report.md",
        "teacher_log.jsonl",
        "distill_log.jsonl",
    ):
        assert (run / name).is_file(), name
    # export.dtype defaults to fp16: half-size floats (the reload test below checks they give the report)
    assert {v.dtype for v in load_file(run / "student.safetensors").values()} == {torch.float16}
    report = json.loads((run / "report.json").read_text())
    assert report["test_pairs"] == 16
    for model in ("teacher", "student"):
        for direction in ("t2v", "v2t"):
            m = report[model][direction]
            assert set(m) == {"R1", "R5", "R10", "MdR", "MnR"}
            assert 0 <= m["R1"] <= m["R5"] <= m["R10"] <= 100
            assert 1 <= m["MdR"] <= 16 and 1 <= m["MnR"] <= 16
    cost = report["efficiency"]
    assert cost["student"]["frames"] == 3 and cost["teacher"]["frames"] == 4
    assert 0 < cost["student"]["gflops_per_video"] and 0 < cost["teacher"]["gflops_per_video"]
    assert "| teacher |" in (run / "report.md").read_text()


def test_report_links_its_recall_and_training_figures(demo):
    from PIL import Image

    run = demo / "run"
    report = json.loads((run / "report.json").read_text())
    for model in ("teacher", "student"):
        for direction in ("t2v", "v2t"):
            curve = report["recall_curves"][model][direction]
            assert len(curve) == report["test_videos"] == 16  # K up to 50 or the gallery, here 16 videos
            assert [curve[0], curve[4], curve[9]] == [report[model][direction][k] for k in ("R1", "R5", "R10")]
            assert curve == sorted(curve) and curve[-1] == 100.0
    markdown = (run / "report.md").read_text()
    assert "![recall at k](recall_at_k.png)" in markdown and "![training curves](training_curves.png)" in markdown
    assert Image.open(run / "recall_at_k.png").size == (990, 396)  # 9 x 3.6 inches at 110 dpi
    assert Image.open(run / "training_curves.png").size == (990, 704)  # a row for each of the two stages


def test_export_writes_a_model_card_folder_that_loads(demo):
    """student/: the same weights, config.json and a README whose front-matter carries the report's metrics of
    the student in both directions, as a model hub reads them (the teacher's only in the card's table)."""
    run, folder = demo / "run", demo / "run" / "student"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert (folder / "model.safetensors").read_bytes() == (run / "student.safetensors").read_bytes()
    card = (folder / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    report = json.loads((run / "report.json").read_text())
    assert header["library_name"] == "clip4clip-distill" and header["datasets"] == ["synthetic"]
    (entry,) = header["model-index"]
    assert entry["name"] == "demo-student" and [r["task"]["name"] for r in entry["results"]] == [
        "Text-to-video retrieval",
        "Video-to-text retrieval",
    ]
    values = {m["name"]: m["value"] for r in entry["results"] for m in r["metrics"]}
    assert values == {
        f"{direction} {key}": round(report["student"][direction][key], 2)
        for direction in ("t2v", "v2t")
        for key in ("R1", "R5", "R10", "MdR", "MnR")
    }
    assert f"| teacher | t2v | {report['teacher']['t2v']['R1']:.1f} |" in card
    assert "## Cost" in card and f"| student | {report['efficiency']['student']['params_M']:.2f} |" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["preprocessing"]["max_frames"] == 3 and config["spec"]["embed_dim"] == 32
    a, b = load_student(folder), load_student(run / "student.safetensors")
    assert a.preprocessing == b.preprocessing and a.spec() == b.spec()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_training_logs_every_loss_term_and_checkpoints(demo):
    records = [json.loads(line) for line in (demo / "run" / "distill_log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 6
    terms = ["kl_loss", "feature_loss", "cross_loss", "contrastive_loss"]
    assert {*terms, "loss", "lr"} <= set(records[-1])
    last = records[-1]
    assert last["loss"] == pytest.approx(sum(last[term] for term in terms), rel=1e-5)
    teacher_records = [json.loads(line) for line in (demo / "run" / "teacher_log.jsonl").read_text().splitlines()]
    assert set(teacher_records[-1]) == {
        "step",
        "loss",
        "lr",
        "contrastive_loss",
        "clips_per_s",
        "val_teacher_t2v_R1",
        "val_teacher_v2t_R1",
    }
    assert sorted(p.name for p in (demo / "run" / "checkpoints" / "distill").iterdir()) == [
        "checkpoint_2",
        "checkpoint_4",
        "checkpoint_6",
    ]


def validation_metrics(run: Path, models: dict) -> dict:
    """R@1 of `models` (view -> model) on the run's validation split, opened as the run opened it."""
    from distill.context import open_datasets, start_run
    from distill.evaluation.evaluate import model_metrics
    from distill.recipe import load_recipe

    # A stage list that needs no teacher: only the datasets are opened here.
    recipe = load_recipe(run / "recipe.yaml", [f"output_dir={run.parent / 'reopened'}", "stages=[prepare]"])
    reopened = start_run(recipe)
    data = open_datasets(reopened)
    assert len(data["val"]) == 8 and not set(data["val"].video_ids) & set(
        data["train"].video_ids + data["test"].video_ids
    )
    return model_metrics(models, data["val"], batch_size=8, accelerator=reopened.accelerator)


def test_each_epoch_logs_validation_r1_of_teacher_and_student(demo):
    """48 pairs in batches of 16: epochs end at steps 3 and 6, each with R@1 on the 8 validation pairs (held
    out of the 56 train clips), never on the test split: the last epoch's equal the exported models' there."""
    run = demo / "run"
    models = {
        "teacher": load_teacher(run / "teacher.safetensors"),
        "student": load_student(run / "student.safetensors"),
    }
    metrics = validation_metrics(run, models)
    for stage, names in (("teacher", ["teacher"]), ("distill", ["teacher", "student"])):
        records = [json.loads(line) for line in (run / f"{stage}_log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [3, 6]
        for model in names:
            for direction in ("t2v", "v2t"):
                assert records[-1][f"val_{model}_{direction}_R1"] == metrics[model][direction]["R1"]
        assert "val_student_t2v_R1" in records[0] or stage == "teacher"


def test_exported_student_reproduces_report_in_new_process(demo):
    run = demo / "run"
    script = f"""
import json
from pathlib import Path
from distill.data.dataset import VideoTextDataset, View
from distill.data.formats import read_jsonl
from distill.evaluation.metrics import retrieval_metrics_from_embeddings
from students import load_student, read_metadata
import torch
path = {str(run / "student.safetensors")!r}
student = load_student(path)
pre = json.loads(read_metadata(path)["preprocessing"])
root = Path({str(demo / "data")!r})
data = VideoTextDataset(read_jsonl(root / "test.jsonl", root, root).pairs,
                        {{"student": View(pre["max_frames"], pre["image_size"])}}, max_words=pre["max_words"])
batch = torch.utils.data.default_collate([data[i] for i in range(len(data))])
with torch.no_grad():
    t = student.encode_text(batch["input_ids"], batch["attention_mask"])
    v = student.encode_video(batch["student_video"], batch["student_mask"])
print(json.dumps(retrieval_metrics_from_embeddings(t, v)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=demo, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    reloaded = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads((run / "report.json").read_text())
    for direction in ("t2v", "v2t"):
        assert reloaded[direction] == pytest.approx(report["student"][direction], abs=1e-6)
    metadata_metrics = json.loads(read_metadata(run / "student.safetensors")["metrics"])
    assert metadata_metrics["t2v"] == report["student"]["t2v"]


def test_reuses_teacher_and_data_and_is_deterministic(demo):
    """stages=[distill,evaluate,export] with teacher.source: same data, same teacher numbers, and with the
    same seed the very same student."""
    first = demo / "run"
    done = run_cli(
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={demo / 'data'}",
        f"output_dir={demo / 'again'}",
        "stages=[distill,evaluate,export]",
        f"teacher.source={first / 'teacher.safetensors'}",
        "train.checkpoint_every=2",
        *TINY,
        cwd=demo,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (demo / "again" / "teacher.safetensors").exists()
    before = json.loads((first / "report.json").read_text())
    after = json.loads((demo / "again" / "report.json").read_text())
    assert after["teacher"] == before["teacher"]
    a, b = load_file(first / "student.safetensors"), load_file(demo / "again" / "student.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_student_with_the_teachers_text_tower_embeds_captions_as_the_teacher(demo):
    """student.text=teacher: the teacher's text tower, frozen, ships in the export; the exported student's
    caption embeddings are the teacher's (to fp16 rounding), after training; a width that differs from the
    teacher's embeddings is refused, naming the key."""
    first = demo / "run"
    common = [
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={demo / 'data'}",
        "stages=[distill,evaluate,export]",
        f"teacher.source={first / 'teacher.safetensors'}",
        *TINY,
        "student.text=teacher",
        "student.token_rank=0",  # the teacher's tower brings its own token embedding
    ]
    done = run_cli(*common, f"output_dir={demo / 'text'}", "student.embed_dim=64", cwd=demo)
    assert done.returncode == 0, done.stderr[-3000:]
    student, teacher = load_student(demo / "text" / "student.safetensors"), load_teacher(first / "teacher.safetensors")
    ids, mask = tokenize(["a small red circle moves left, then it turns blue", "a large green square moves up"])
    with torch.no_grad():
        torch.testing.assert_close(student.encode_text(ids, mask), teacher.encode_text(ids, mask), rtol=0, atol=2e-3)
    assert not any(p.requires_grad for p in student.text.parameters())
    # Its videos are in the teacher's space: the index and search let teacher queries meet them.
    spaces = [
        load_encoder(str(path))[1]["space"]
        for path in (demo / "text" / "student.safetensors", first / "teacher.safetensors")
    ]
    assert spaces[0] == spaces[1] == f"teacher:{teacher_sha256(teacher)}"
    done = run_cli(*common, f"output_dir={demo / 'text_wrong'}", "student.embed_dim=32", cwd=demo)
    assert done.returncode != 0
    assert (
        "student.embed_dim: 32, but student.text=teacher embeds captions with the teacher's 64-d text tower; "
        "set student.embed_dim=64"
    ) in done.stderr


def test_resume_from_checkpoint_ends_with_same_student(demo):
    """A run folder holding only the step-4 checkpoint of the first run (as after a kill at step 5, in
    the middle of the second epoch of 3 batches): resume=auto continues there and must end with the same
    weights as the uninterrupted run; with another loss weight it stops instead."""
    first = demo / "run"
    resumed = demo / "resumed"
    shutil.copytree(
        first / "checkpoints" / "distill" / "checkpoint_4", resumed / "checkpoints" / "distill" / "checkpoint_4"
    )
    args = [
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={demo / 'data'}",
        "stages=[distill,evaluate,export]",
        f"teacher.source={first / 'teacher.safetensors'}",
        "train.checkpoint_every=2",
        "train.resume=auto",
        *TINY,
    ]
    done = run_cli(*args, f"output_dir={resumed}", cwd=demo)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout + done.stderr
    records = [json.loads(line) for line in (resumed / "distill_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [6]  # steps 5-6 ran here; only the last is logged at this size
    a, b = load_file(first / "student.safetensors"), load_file(resumed / "student.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the same checkpoint resumed with another loss weight would continue another run: refused, nothing trained
    refused = demo / "refused"
    shutil.copytree(
        first / "checkpoints" / "distill" / "checkpoint_4", refused / "checkpoints" / "distill" / "checkpoint_4"
    )
    done = run_cli(*args, f"output_dir={refused}", "loss.kl_weight=2", cwd=demo)
    assert done.returncode != 0
    saved = refused / "checkpoints" / "distill" / "checkpoint_4"
    assert f"{saved} was saved with loss.kl_weight 1.0 (now 2.0): resuming would continue another run" in done.stderr
    assert not (refused / "distill_log.jsonl").exists() and not (refused / "student.safetensors").exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.bach_size=4", "unknown key 'train.bach_size'; did you mean 'train.batch_size'?"),
        ("teacher.source=missing.safetensors", "teacher.source: no such file: missing.safetensors"),
        ("student.pretrained=vit.pth", "student.pretrained: no such weights file: vit.pth"),
        ("stages=[evaluate,distill]", "stages:"),
        # Models that cannot be built: before the data and teacher stages, not minutes later.
        (
            "student.backbone=mobilenetv3_smal",
            "student.backbone: no timm model 'mobilenetv3_smal'; did you mean 'mobilenetv3_small_100'",
        ),
        (
            "student.backbone_kwargs={depth: 2, depht: 3}",
            "student: vit_tiny_patch16_224 with backbone_kwargs {'depth': 2, 'depht': 3} cannot be built",
        ),
        ("student.text=teacher", "student.token_rank: student.text=teacher keeps the teacher's token embedding"),
        (
            "teacher.source=open_clip:ViT-B-32-quickgel?pretrained=x.pt",
            "no open_clip model 'ViT-B-32-quickgel'; did you mean 'ViT-B-32-quickgelu'",
        ),
    ],
)
def test_bad_recipe_fails_before_any_work(tmp_path, override, message):
    done = run_cli(str(REPO / "recipes" / "demo.yaml"), f"output_dir={tmp_path / 'run'}", override, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert not (tmp_path / "run").exists()


def test_tight_teacher_trains_distils_and_evaluates(demo):
    """A tightTransf teacher has no embeddings: it is trained on its cross scores, the student learns from
    those scores (KL and contrastive; feature matching and the cross-model term must be off), and evaluation
    scores every pair."""
    done = run_cli(
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={demo / 'data'}",
        f"output_dir={demo / 'tight'}",
        "stages=[teacher,distill,evaluate,export]",
        "teacher.sim_header=tightTransf",
        "loss.feature_weight=0",
        "loss.cross_weight=0",
        *TINY,
        cwd=demo,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((demo / "tight" / "report.json").read_text())
    for model in ("teacher", "student"):
        assert 0 <= report[model]["t2v"]["R1"] <= report[model]["t2v"]["R10"] <= 100
    records = [json.loads(line) for line in (demo / "tight" / "distill_log.jsonl").read_text().splitlines()]
    assert set(records[-1]) == {
        "step",
        "loss",
        "lr",
        "kl_loss",
        "contrastive_loss",
        "clips_per_s",
        "val_teacher_t2v_R1",
        "val_teacher_v2t_R1",
        "val_student_t2v_R1",
        "val_student_v2t_R1",
    }
    teacher = load_teacher(demo / "tight" / "teacher.safetensors")
    # tight: pairwise scoring, in the validation as in evaluation
    assert (
        records[-1]["val_teacher_t2v_R1"]
        == validation_metrics(demo / "tight", {"teacher": teacher})["teacher"]["t2v"]["R1"]
    )
    assert load_teacher(demo / "tight" / "teacher.safetensors").sim_header == "tightTransf"
    # A tight teacher given as teacher.source is only known after loading: the run stops there.
    done = run_cli(
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={demo / 'data'}",
        f"output_dir={demo / 'tight2'}",
        "stages=[distill]",
        f"teacher.source={demo / 'tight' / 'teacher.safetensors'}",
        *TINY,
        cwd=demo,
    )
    assert done.returncode != 0
    assert "loss.feature_weight: a tightTransf teacher has no embeddings to match" in done.stderr


def test_tight_teacher_refuses_feature_matching(demo):
    """Before any work for a tight teacher trained here (a loaded one: see the test above)."""
    message = "loss.feature_weight: a tightTransf teacher has no embeddings to match"
    done = run_cli(
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={demo / 'data'}",
        f"output_dir={demo / 'tight3'}",
        "stages=[teacher,distill]",
        "teacher.sim_header=tightTransf",
        *TINY,
        cwd=demo,
    )
    assert done.returncode == 2 and message in done.stderr
