"""The shipped recipes for real data. recipes/msrvtt.yaml run as a user runs it: on an MSR-VTT tree of real
.mp4 files (CLIP4Clip's annotation files), an original CLIP4Clip checkpoint and the frame encoder's ImageNet
file in timm's layout, both from random weights, through the CLI. Only its paths, the frame size (32 px), the
inherited text tower's sizes (the test teacher's), the steps and the worker count are overridden; everything
else (bf16 mixed precision, frame shards, teacher cache, 12 frames, the student) is the recipe's. Every
CLIP4Clip dataset's recipe passes `prepare --check` on a small tree in its real format, and `--dry-run` checks
and prices a run without training.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from test_formats import clip, place, write_lines  # noqa: F401 (clip: a fixture, one real H.264 clip)
from test_teacher_loading import original_checkpoint

from distill.context import start_run
from distill.core.config import RecipeError
from distill.data.synthetic import write_mp4
from distill.data.video import read_clip
from distill.evaluation.metrics import retrieval_metrics
from distill.prepare import main as prepare_main
from distill.recipe import load_recipe
from distill.run import main as run_main
from distill.training.train import end_training
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
    # timm's state dict of the recipe's frame encoder, classifier included, as its Hugging Face repo ships it
    imagenet = root / "ckpt" / "mobilenetv4_conv_small.pth"
    torch.manual_seed(0)
    torch.save(timm.create_model("mobilenetv4_conv_small").state_dict(), imagenet)
    return {"annotations": ann, "videos": videos, "checkpoint": checkpoint, "imagenet": imagenet, "root": root}


def paths(msrvtt) -> list[str]:
    return [
        f"data.annotations={msrvtt['annotations']}",
        f"data.video_root={msrvtt['videos']}",
        f"teacher.source={msrvtt['checkpoint']}",
        f"student.pretrained={msrvtt['imagenet']}",
    ]


# The test teacher's text tower is 64 wide with one head and one layer: the inherited tower takes its sizes.
SMALL_TEXT = ["student.text_width=64", "student.text_heads=1", "student.text_layers=1", "student.token_rank=16"]


def test_the_recipe_names_each_path_it_lacks(msrvtt):
    """The recipe ships with placeholder paths; each one missing stops the run naming its key."""
    given = paths(msrvtt)
    for key, message in (
        ("data.annotations", "data.annotations: no such folder: /data/msrvtt_data"),
        ("data.video_root", "data.video_root: no such folder: /data/MSRVTT/videos"),
        ("teacher.source", "teacher.source: no such file: /ckpt/msrvtt/pytorch_model.bin.4"),
        ("student.pretrained", "student.pretrained: no such weights file: /ckpt/timm/mobilenetv4_conv_small"),
    ):
        with pytest.raises(RecipeError, match=message):
            load_recipe(RECIPE, [p for p in given if not p.startswith(key)])
    recipe = load_recipe(RECIPE, [*given, *SMALL_TEXT])
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
            "student.image_size=32",
            *SMALL_TEXT,
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
    assert manifest["encoding"] == "raw"  # auto: both views are at most 64 px (16 and 32)
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
    assert (c.backbone, c.max_frames, c.embed_dim, c.text, c.temporal_layers) == (
        "mobilenetv4_conv_small",
        8,
        512,
        "inherit",
        2,
    )
    ids, attention = tokenize(list(TEST.values()), 32)
    assert student.encode_text(ids, attention).shape == (8, 512)


# Every CLIP4Clip dataset's recipe on a small tree in its real format (the files tests/test_formats.py reads).


def msrvtt_tree(ann: Path, videos: Path, source: Path) -> str:
    place(source, videos, "video0.mp4", "video1.mp4", "video2.mp4", "video3.mp4")
    write_lines(ann / "MSRVTT_train.9k.csv", ["video_id", "video0", "video1"])
    write_lines(ann / "MSRVTT_train.7k.csv", ["video_id", "video1"])
    captions = [("video0", "a dog runs"), ("video1", "a man cooks"), ("video0", "a dog is running")]
    (ann / "MSRVTT_data.json").write_text(
        json.dumps(
            {
                "videos": [{"video_id": f"video{i}"} for i in range(4)],
                "sentences": [{"video_id": v, "caption": c, "sen_id": i} for i, (v, c) in enumerate(captions)],
            }
        )
    )
    write_lines(
        ann / "MSRVTT_JSFUSION_test.csv",
        ["key,vid_key,video_id,sentence", "ret0,msr2,video2,a cat sleeps", "ret1,msr3,video3,people dance"],
    )
    return "video0.mp4"


def msvd_tree(ann: Path, videos: Path, source: Path) -> str:
    place(source, videos, "a/-4wsuPCjDBc_5_15.avi", "b/zv2RIbUsnSw_335_341.avi", "c/other_1_2.avi")
    write_lines(ann / "train_list.txt", ["-4wsuPCjDBc_5_15", "zv2RIbUsnSw_335_341"])
    write_lines(ann / "test_list.txt", ["other_1_2"])
    captions = {
        "-4wsuPCjDBc_5_15": [["a", "man", "sings"], ["someone", "is", "singing"], ["a", "song"]],
        "zv2RIbUsnSw_335_341": [["a", "cat", "plays"], ["a", "kitten", "plays"]],
        "other_1_2": [["a", "red", "car"], ["a", "car", "drives"]],
    }
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps(captions))
    return "b/zv2RIbUsnSw_335_341.avi"


def lsmdc_tree(ann: Path, videos: Path, source: Path) -> str:
    clips = [f"0001_Movie_00.00.0{i}.000-00.00.0{i + 1}.000" for i in range(4)]
    place(source, videos, *(f"0001_Movie/{c}.avi" for c in clips))
    row = "{}\t0\t1\t0\t1\t{}"
    write_lines(
        ann / "LSMDC16_annos_training.csv", [row.format(c, f"Someone does thing {i}.") for i, c in enumerate(clips[:3])]
    )
    write_lines(ann / "LSMDC16_challenge_1000_publictect.csv", [row.format(clips[3], "Someone drives.")])
    return f"0001_Movie/{clips[1]}.avi"


def activitynet_tree(ann: Path, videos: Path, source: Path) -> str:
    place(source, videos, "abc123.mp4", "v_def456.mkv", "ghi789.mp4")

    def entry(*sentences):
        return {"duration": 40.5, "timestamps": [[0, 10]] * len(sentences), "sentences": list(sentences)}

    ann.mkdir(parents=True)
    (ann / "train.json").write_text(
        json.dumps({"v_abc123": entry("A man walks.", " He sits."), "v_def456": entry("Kids play.")})
    )
    (ann / "val_1.json").write_text(json.dumps({"v_ghi789": entry("A dog barks.", " It runs.")}))
    return "abc123.mp4"


def didemo_tree(ann: Path, videos: Path, source: Path) -> str:
    names = ["12090392@N02_13482799053_87ef417396.mov", "10015567@N08_3655084291_d8b58466fa.mp4", "3@N0_1_2.mov"]
    place(source, videos, *names)

    def item(video, description):
        return {"video": video, "description": description, "times": [[0, 0]], "annotation_id": 1}

    ann.mkdir(parents=True)
    (ann / "train_data.json").write_text(
        json.dumps([item(names[0], "a woman waves"), item(names[1], "a car turns"), item(names[0], "the camera pans")])
    )
    (ann / "test_data.json").write_text(json.dumps([item(names[2], "a bird lands")]))
    return names[1]


# recipe -> (the tree of its format, (train pairs, train videos), (test pairs, test videos))
LAYOUTS = {
    "msrvtt": (msrvtt_tree, (3, 2), (2, 2)),
    "msrvtt-mobileclip": (msrvtt_tree, (3, 2), (2, 2)),
    "msvd": (msvd_tree, (5, 2), (2, 1)),  # every caption a pair, a clip found by name at any depth
    "lsmdc": (lsmdc_tree, (3, 3), (1, 1)),
    "activitynet": (activitynet_tree, (2, 2), (1, 1)),  # a paragraph a video
    "didemo": (didemo_tree, (2, 2), (1, 1)),
}


def test_there_is_a_recipe_for_every_clip4clip_dataset_with_its_settings():
    """CLIP4Clip's README: 32 tokens and 12 frames, 64 and 64 for the paragraph datasets. The default student
    reads 8 of the 12 frames (the cost bar), all 64 of a paragraph's."""
    shipped = {path.stem for path in (REPO / "recipes").glob("*.yaml")} - {"demo"}
    assert shipped == set(LAYOUTS)
    for name in LAYOUTS:
        text = (REPO / "recipes" / f"{name}.yaml").read_text()
        assert "What to download" in text and "Quality at full size cannot be measured" in text
        recipe = yaml.safe_load(text)
        paragraphs = name in ("activitynet", "didemo")
        student_frames = 64 if paragraphs else 12 if name == "msrvtt-mobileclip" else 8
        assert recipe["data"]["max_words"] == (64 if paragraphs else 32)
        assert (recipe["teacher"]["max_frames"], recipe["student"]["max_frames"]) == (
            64 if paragraphs else 12,
            student_frames,
        )


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_recipe_checks_its_dataset_and_names_a_broken_video(name, tmp_path, clip, capsys):  # noqa: F811
    build, (train_pairs, train_videos), (test_pairs, test_videos) = LAYOUTS[name]
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    broken = build(ann, videos, clip)
    recipe = REPO / "recipes" / f"{name}.yaml"
    data = [f"data.annotations={ann}", f"data.video_root={videos}"]
    assert prepare_main(["--check", str(recipe), *data]) == 0
    out = capsys.readouterr().out
    assert f"train: {train_pairs} pairs of {train_videos} videos are usable; 0 problems" in out
    assert f"test: {test_pairs} pairs of {test_videos} videos are usable; 0 problems" in out
    (videos / broken).write_bytes(b"not a video")
    assert prepare_main(["--check", str(recipe), *data]) == 1
    out = capsys.readouterr().out
    assert f"train: {train_pairs - (2 if name == 'msvd' or name.startswith('msrvtt') else 1)} pairs" in out
    assert str(videos / broken) in out  # the problem names the video file (and the annotation line)


def test_the_7k_msrvtt_split_is_one_key(tmp_path, clip, capsys):  # noqa: F811
    ann, videos = tmp_path / "annotations", tmp_path / "videos"
    msrvtt_tree(ann, videos, clip)
    data = [f"data.annotations={ann}", f"data.video_root={videos}", "data.train=MSRVTT_train.7k.csv"]
    assert prepare_main(["--check", str(RECIPE), *data]) == 0
    assert "train: 1 pairs of 1 videos are usable; 0 problems" in capsys.readouterr().out


# Know before you run.


def test_a_dry_run_prints_the_plan_data_cost_and_disk_and_trains_nothing(msrvtt, tmp_path, capsys):
    out_dir = tmp_path / "run"
    given = [
        *paths(msrvtt),
        *SMALL_TEXT,
        "data.val_fraction=0",
        "train.patience=0",
        f"output_dir={out_dir}",
        "student.image_size=32",
    ]
    assert run_main([str(RECIPE), "--dry-run", *given]) == 0
    out = capsys.readouterr().out
    assert "name: msrvtt" in out and f"output_dir: {out_dir}" in out  # the resolved recipe
    stages = ["data", "prepare", "teacher", "cache", "distill", "evaluate", "export"]
    assert all(f"{i}. {stage}:" in out for i, stage in enumerate(stages, start=1))
    assert "train: 12 pairs of 6 videos usable, 0 problems" in out
    assert "test: 8 pairs of 8 videos usable, 0 problems" in out
    rows = [line for line in out.splitlines() if line.startswith(("| teacher |", "| student |", "| teacher / student"))]
    assert len(rows) == 3 and rows[0].endswith("| 12 | 16 |") and rows[1].endswith("| 8 | 32 |")
    assert "frame shards" in out and "x 14 videos" in out  # both splits' videos, each once
    # Two-tower teacher: a 64-d float32 embedding a video and a caption.
    assert "256 bytes a video x 6 + 256 bytes a caption x 12" in out
    assert "warning" not in out  # the student starts from its ImageNet file
    assert not out_dir.exists()  # nothing written, nothing trained


def test_a_dry_run_warns_of_a_full_size_student_from_random_weights(msrvtt, tmp_path, capsys):
    given = [*paths(msrvtt)[:3], *SMALL_TEXT, "student.pretrained=null", f"output_dir={tmp_path / 'run'}"]
    assert run_main([str(RECIPE), *given, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "warning: the student's frame encoder (mobilenetv4_conv_small at 224 px) starts from random weights" in out
    assert "set student.pretrained=FILE (ImageNet weights in timm's layout) or student.init=EXPORT" in out


def test_a_dry_run_stops_naming_the_file_and_key_that_do_not_fit(msrvtt, tmp_path, capsys):
    other = tmp_path / "efficientvit_m2.pth"
    torch.save(timm.create_model("efficientvit_m2").state_dict(), other)
    given = [*paths(msrvtt)[:3], *SMALL_TEXT, f"student.pretrained={other}"]
    assert run_main([str(RECIPE), "--dry-run", *given]) == 2
    assert (
        f"error: student.pretrained: {other} does not fit mobilenetv4_conv_small: missing keys"
        in capsys.readouterr().err
    )
    broken = tmp_path / "pytorch_model.bin.4"
    broken.write_bytes(b"not a checkpoint")
    given = [*paths(msrvtt)[:2], f"teacher.source={broken}", *paths(msrvtt)[3:], *SMALL_TEXT]
    assert run_main([str(RECIPE), "--dry-run", *given]) == 2
    assert str(broken) in capsys.readouterr().err


def test_a_run_says_so_when_a_full_size_student_starts_from_random_weights(msrvtt, tmp_path, capsys):
    # mixed_precision=no: the process's Accelerator state, which earlier tests made without mixed precision
    plain = ["log_with=[]", "mixed_precision='no'"]
    given = [*paths(msrvtt)[:3], *SMALL_TEXT, "student.pretrained=null", f"output_dir={tmp_path / 'run'}"]
    run = start_run(load_recipe(RECIPE, [*given, *plain]))
    out = capsys.readouterr().out
    assert "warning: the student's frame encoder (mobilenetv4_conv_small at 224 px) starts from random weights" in out
    end_training(run.accelerator)
    start_run(load_recipe(RECIPE, [*paths(msrvtt), *SMALL_TEXT, f"output_dir={tmp_path / 'run2'}", *plain]))
    assert "warning" not in capsys.readouterr().out  # its ImageNet file gives it weights
