"""Two CPU processes give what one process gives with the same global batch: the same gradients for one
step of a tiny model, the same losses, student and report after a tiny run through the real CLI, and the
same teacher cache, and distillation from it, through the CLI.

Run as a script (`accelerate launch ... tests/test_distributed.py OUT`), this file is the worker of the
gradient test.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from tiny import TINY as TINY_BASE
from torch import nn

from distill.core.schema import LossConfig, TeacherConfig
from distill.core.scorers import scorer_for
from distill.training.cache import read_manifest
from distill.training.gradcache import GradCache, concat_outputs, gather_outputs, split_batch
from distill.training.losses import DistillationLoss
from distill.training.train import end_training, synchronise_batch_norm
from teachers import CLIP4Clip, tokenize
from teachers.archs import teacher_arch

REPO = Path(__file__).resolve().parents[1]
# 13 test pairs in batches of 8: the last batch (5) does not split evenly over 2 processes.
# The students are compared within 1e-4: exported unrounded (fp16 could round two nearly equal values apart).
TINY = [*TINY_BASE, "data.synthetic.num_test=13", "train.log_every=1", "export.dtype=fp32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path | str, *args: str, processes: int, cwd: Path) -> subprocess.CompletedProcess:
    """`script` (or `-m` and a module) with 1 plain process, or with `processes` CPU processes through
    `accelerate launch`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf_home")}
    launcher = [sys.executable]
    if processes > 1:
        env.update(ACCELERATE_USE_CPU="1", GLOO_SOCKET_IFNAME="lo")
        launcher = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
        ]
    return subprocess.run(
        [*launcher, str(script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


# One step of a tiny model


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.text, self.video = nn.Linear(6, 4), nn.Linear(5, 4)
        self.logit_scale_log = nn.Parameter(torch.tensor(1.5))

    def forward(self, input_ids, attention_mask, video, video_mask) -> dict[str, torch.Tensor]:
        return {
            "text_features": F.normalize(self.text(input_ids), dim=-1),
            "video_features": F.normalize(self.video(video), dim=-1),
            "logit_scale": self.logit_scale_log.exp(),
        }


def one_step(accelerator: Accelerator, accumulate: int) -> dict[str, torch.Tensor]:
    """Losses and gradients of one step on a global batch of 8, of which this process holds its share,
    in `accumulate` micro-batches.

    The loss has learned projections (student width 4, teacher width 3): parameters after the gather.
    """
    torch.manual_seed(0)
    model = TwoTower()
    loss_fn = DistillationLoss(LossConfig(kl_temperature=2.0), student_dim=4, teacher_dim=3)
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randn(8, 6, generator=g),
        "attention_mask": torch.ones(8),
        "student_video": torch.randn(8, 5, generator=g),
        "student_mask": torch.ones(8),
        "teacher_text": F.normalize(torch.randn(8, 3, generator=g), dim=-1),
        "teacher_video": F.normalize(torch.randn(8, 3, generator=g), dim=-1),
    }
    model, loss_fn = accelerator.prepare(model, loss_fn)
    n = 8 // accelerator.num_processes
    micro = split_batch({k: v[accelerator.process_index * n :][:n] for k, v in batch.items()}, accumulate)
    # The teacher's outputs in the order of the student's: micro-batch by micro-batch, ranks within each.
    teacher_out = concat_outputs(
        [
            gather_outputs(
                {
                    "text_features": b["teacher_text"],
                    "video_features": b["teacher_video"],
                    "logit_scale": torch.tensor(20.0),
                }
            )
            for b in micro
        ]
    )
    grad_cache = GradCache(model, "student", accelerator)
    losses = loss_fn(grad_cache.forward(micro), teacher_out)
    grad_cache.backward(sum(losses.values()))
    result = {f"loss/{k}": v.detach() for k, v in losses.items()}
    for prefix, module in (("model", model), ("loss", loss_fn)):
        for name, p in accelerator.unwrap_model(module).named_parameters():
            result[f"grad/{prefix}.{name}"] = p.grad
    result["processes"] = torch.tensor(accelerator.num_processes)
    return result


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_processes_give_the_one_process_gradients(tmp_path, accumulate):
    """Including the logit scale and the projections, which see the gathered batch on every process; with
    gradient accumulation too (4 micro-batches of 2 pairs over both processes, each replayed under DDP)."""
    done = launch(Path(__file__), str(tmp_path / "two.pt"), str(accumulate), processes=2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warning: BatchNorm statistics stay per process on CPU (SyncBatchNorm needs GPUs)" in done.stdout
    two = torch.load(tmp_path / "two.pt")
    one = one_step(Accelerator(cpu=True), accumulate=1)
    assert two.pop("processes").item() == 2 and one.pop("processes").item() == 1
    assert two.keys() == one.keys()
    assert {
        "loss/contrastive_loss",
        "loss/kl_loss",
        "loss/feature_loss",
        "grad/model.logit_scale_log",
        "grad/loss.text_projection.weight",
    } <= set(one)
    # Micro-batches put the global batch in another order (micro-batch by micro-batch, ranks within each):
    # the same sums in another order, so rounding differs (up to 1.4e-6 on gradients of about 1).
    rtol = 1e-5 if accumulate > 1 else 0
    for key in one:
        assert one[key].abs().max() > 0, key
        torch.testing.assert_close(two[key], one[key], rtol=rtol, atol=1e-6, msg=key)


def cross_encoder_step(accelerator: Accelerator) -> dict[str, torch.Tensor]:
    """Loss and gradients of one contrastive step of a tiny tightTransf CLIP4Clip on a global batch of 4
    pairs, of which this process holds its share: the cross encoder scores every caption of the global
    batch against every video, as one process does."""
    torch.manual_seed(0)
    config = TeacherConfig(
        max_frames=2,
        sim_header="tightTransf",
        image_size=16,
        patch_size=8,
        vision_width=64,
        vision_layers=1,
        text_width=64,
        text_layers=1,
        cross_layers=1,
    )
    model = CLIP4Clip(teacher_arch(config, max_words=8))
    ids, attention = tokenize(["a red circle", "a blue square", "two green stars", "nothing moves"], max_words=8)
    batch = {
        "input_ids": ids,
        "attention_mask": attention,
        "teacher_video": torch.randn(4, 2, 3, 16, 16),
        "teacher_mask": torch.ones(4, 2, dtype=torch.long),
    }
    scorer = scorer_for(model)
    loss_fn = DistillationLoss(LossConfig(contrastive_weight=1.0), student_dim=0, teacher_dim=0)
    model = accelerator.prepare(model)
    n = 4 // accelerator.num_processes
    local = {k: v[accelerator.process_index * n :][:n] for k, v in batch.items()}
    grad_cache = GradCache(model, "teacher", accelerator)
    losses = loss_fn(scorer.loss_inputs(grad_cache.forward([local])), None)
    grad_cache.backward(sum(losses.values()))
    result = {f"loss/{k}": v.detach() for k, v in losses.items()}
    for name, p in accelerator.unwrap_model(model).named_parameters():
        if p.grad is not None:
            result[f"grad/{name}"] = p.grad
    return result


def test_two_processes_train_a_cross_encoder_as_one(tmp_path):
    """tightTransf teacher training over the global batch: the text and frame features are gathered and
    every process scores all pairs, so the loss and the gradients equal those of one process."""
    done = launch(Path(__file__), str(tmp_path / "two.pt"), "cross", processes=2, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = torch.load(tmp_path / "two.pt"), cross_encoder_step(Accelerator(cpu=True))
    assert two.keys() == one.keys() and {"grad/cross.pooler.dense.weight", "grad/clip.visual.proj"} <= set(one)
    for key in one:
        assert one[key].abs().max() > 0, key
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("accumulate", [2, 4, 8])
def test_accumulation_gives_the_whole_batch_gradients(accumulate):
    whole, micro = one_step(Accelerator(cpu=True), accumulate=1), one_step(Accelerator(cpu=True), accumulate)
    assert whole.keys() == micro.keys()
    for key in whole:
        torch.testing.assert_close(micro[key], whole[key], rtol=0, atol=1e-6, msg=key)


# The CLI


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """A tiny teacher exported once, then distill, evaluate and export with 1 and with 2 processes."""
    tmp = tmp_path_factory.mktemp("distributed")
    run_py, recipe = REPO / "distill" / "run.py", str(REPO / "recipes" / "demo.yaml")
    data = f"data.root={tmp / 'data'}"
    done = launch(
        run_py, recipe, data, f"output_dir={tmp / 'teacher'}", "stages=[data,teacher]", *TINY, processes=1, cwd=tmp
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for processes in (1, 2):
        done = launch(
            run_py,
            recipe,
            data,
            f"output_dir={tmp / str(processes)}",
            "stages=[distill,evaluate,export]",
            f"teacher.source={tmp / 'teacher' / 'teacher.safetensors'}",
            *TINY,
            processes=processes,
            cwd=tmp,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"distill: 6 steps of 16 pairs split over {processes} process(es)" in done.stdout
    return tmp


def test_same_logged_losses(runs):
    one, two = (
        [json.loads(line) for line in (runs / p / "distill_log.jsonl").read_text().splitlines()] for p in ("1", "2")
    )
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    assert one[0].keys() == {
        "step",
        "loss",
        "lr",
        "contrastive_loss",
        "kl_loss",
        "feature_loss",
        "cross_loss",
        "clips_per_s",
    }
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        assert all(b[key] == pytest.approx(a[key], abs=1e-4) for key in a if key != "clips_per_s"), (a, b)


def key_bias_slices(state: dict[str, torch.Tensor]) -> dict[str, slice]:
    """The key part of every packed q, k, v bias. Softmax ignores what it adds to a query's scores, so its
    true gradient is zero and Adam turns rounding noise into steps of about the learning rate."""
    slices = {}
    for name, value in state.items():
        if name.endswith(("in_proj_bias", "qkv.bias")):
            width = len(value) // 3
            slices[name] = slice(width, 2 * width)
    return slices


def test_same_exported_student(runs):
    one, two = load_file(runs / "1" / "student.safetensors"), load_file(runs / "2" / "student.safetensors")
    assert one.keys() == two.keys()
    noise = key_bias_slices(one)
    assert "text.transformer.resblocks.0.attn.in_proj_bias" in noise
    for name in one:
        a, b = one[name].clone(), two[name].clone()
        if name in noise:
            a[noise[name]] = b[noise[name]] = 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)


def test_same_report(runs):
    one, two = (json.loads((runs / p / "report.json").read_text()) for p in ("1", "2"))
    assert one["test_pairs"] == 13
    assert two == one


# The teacher cache through the CLI


def test_two_processes_write_the_one_process_index(runs):
    """`accelerate launch -m distill.index`: each process embeds every other chunk of 16 videos (5 chunks
    here), the main one writes the index: the same entries and bit-equal embeddings (the same batches)."""
    from distill.retrieval.index import read_index

    student, videos = runs / "1" / "student.safetensors", runs / "data" / "videos"
    for processes in (1, 2):
        out = runs / f"index_{processes}"
        done = launch(
            "-m",
            "distill.index",
            str(student),
            str(videos),
            "--out",
            str(out),
            "--batch-size",
            "2",
            processes=processes,
            cwd=runs,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("videos embedded") == 1  # the main process reports
    (_, entries, one), (_, two_entries, two) = read_index(runs / "index_1"), read_index(runs / "index_2")
    assert len(entries) == len(list(videos.glob("*.mp4"))) > 64 and entries == two_entries
    assert torch.equal(one, two)


@pytest.fixture(scope="module")
def cache_runs(runs) -> Path:
    """The tiny teacher of `runs` caches its outputs for the 48 train videos in 6 shards of 8, and a student
    is distilled from that cache and exported, with 1 and with 2 processes (3 shards each)."""
    run_py, recipe = REPO / "distill" / "run.py", str(REPO / "recipes" / "demo.yaml")
    common = [
        f"data.root={runs / 'data'}",
        f"teacher.source={runs / 'teacher' / 'teacher.safetensors'}",
        *TINY,
        "teacher.cache_videos_per_shard=8",
    ]
    for processes in (1, 2):
        out = runs / f"cache_{processes}"
        done = launch(
            run_py, recipe, f"output_dir={out}", "stages=[cache,distill,export]", *common, processes=processes, cwd=runs
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert (
            f"cache: teacher outputs for 48 train pairs in {out / 'teacher_cache'} (shards computed now: 6)"
        ) in done.stdout
        assert f"distill: teacher outputs from {out / 'teacher_cache'}" in done.stdout
        assert f"distill: 6 steps of 16 pairs split over {processes} process(es)" in done.stdout
    return runs


def test_two_processes_write_the_one_process_cache(cache_runs):
    """Shard k is written by process k % 2: every shard, and the manifest, are those of one process."""
    one, two = (cache_runs / f"cache_{p}" / "teacher_cache" for p in (1, 2))
    manifest = read_manifest(one)
    assert manifest["complete"] and manifest["shards"] == [f"shard_{k:05d}.safetensors" for k in range(6)]
    assert manifest["key"]["dataset"]["pairs"] == manifest["key"]["dataset"]["videos"] == 48
    assert read_manifest(two) == manifest
    assert sorted(p.name for p in two.iterdir()) == ["manifest.json", *manifest["shards"]]
    for k, name in enumerate(manifest["shards"]):
        a, b = load_file(one / name), load_file(two / name)
        assert (
            a.keys()
            == b.keys()
            == {
                "video.video_features",
                "text.text_features",
                "shared.logit_scale",
                "video_pairs",
                "text_pairs",
                "text_videos",
                "video_valid",
            }
        )
        # One caption a video: pair i is video row i.
        for index in ("video_pairs", "text_pairs", "text_videos"):
            assert b[index].tolist() == list(range(8 * k, 8 * k + 8)), (name, index)
        assert b["video_valid"].all()
        for tensor in a:
            assert torch.equal(b[tensor], a[tensor]), (name, tensor)


def test_distillation_from_a_two_process_cache(cache_runs):
    """Each process looks up the teacher outputs of the whole step from the pair indices it gathers, in
    shards either process wrote."""
    logs = (cache_runs / f"cache_{p}" / "distill_log.jsonl" for p in (1, 2))
    one, two = ([json.loads(line) for line in log.read_text().splitlines()] for log in logs)
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys() and a["kl_loss"] > 0 and a["feature_loss"] > 0
        assert all(b[key] == pytest.approx(a[key], abs=1e-4) for key in a if key != "clips_per_s"), (a, b)
    one, two = (load_file(cache_runs / f"cache_{p}" / "student.safetensors") for p in (1, 2))
    assert one.keys() == two.keys()
    noise = key_bias_slices(one)
    for name in one:
        a, b = one[name].clone(), two[name].clone()
        if name in noise:
            a[noise[name]] = b[noise[name]] = 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=name)


if __name__ == "__main__":
    accelerator = Accelerator()
    norm = nn.BatchNorm1d(2)
    assert synchronise_batch_norm(norm, accelerator) is norm  # on CPU, with the warning the test reads
    if sys.argv[2] == "cross":
        result = cross_encoder_step(accelerator)
    else:
        result = one_step(accelerator, accumulate=int(sys.argv[2]))
    if accelerator.is_main_process:
        torch.save(result, sys.argv[1])
    accelerator.wait_for_everyone()
    end_training(accelerator)


@pytest.mark.parametrize(
    "override, message",
    [
        ("eval.batch_size=5", "eval.batch_size: 5 is the global batch and must split evenly over the 2 processes"),
        (
            "train.accumulate=3",
            "train.batch_size: 16 is the global batch and must split evenly over the 2 processes "
            "and 3 micro-batches (accumulate)",
        ),
    ],
)
def test_batches_that_do_not_split_over_the_processes_fail_before_any_work(tmp_path, override, message):
    """With split_batches every batch is global; its size is checked against the process count at the start."""
    done = launch(
        REPO / "distill" / "run.py",
        str(REPO / "recipes" / "demo.yaml"),
        f"output_dir={tmp_path / 'run'}",
        *TINY,
        override,
        processes=2,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert message in done.stderr
    assert not (tmp_path / "data").exists()  # the data stage never ran
