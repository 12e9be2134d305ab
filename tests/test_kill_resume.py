"""A distillation run killed with SIGKILL, in the middle of a step or in the middle of writing a checkpoint,
resumes with `train.resume=auto` and exports, bit for bit, the student of a run that was never interrupted.

The runs go through the real command line (`distill.run.main`). To kill at a chosen moment, the child
pauses there (an optimizer step, or a checkpoint whose model file is half written) and writes a marker
file; the test then sends SIGKILL from outside, so nothing in the child can clean up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import DATA, STUDENT, TRAIN

from distill.core.schema import SyntheticConfig, TeacherConfig
from distill.data.synthetic import generate_synthetic
from teachers import CLIP4Clip, save_teacher
from teachers.archs import teacher_arch

REPO = Path(__file__).resolve().parents[1]
TINY = [
    *DATA,
    "teacher.max_frames=4",
    *STUDENT,
    *TRAIN,
    "train.log_every=1",
    "train.checkpoint_every=2",
    "stages=[distill,export]",
]
# Runs distill/run.py's main, pausing where PAUSE_AT says: "step:N" before the N-th optimizer step of this
# process, "save:N" inside the N-th checkpoint save, after the model file is written and cut in half.
CHILD = """
import os, sys, time
from pathlib import Path
import torch
from accelerate import Accelerator
from distill.run import main

kind, n = os.environ["PAUSE_AT"].split(":")
calls = {"step": 0, "save": 0}

def pause():
    Path(os.environ["PAUSE_MARKER"]).write_text("paused")
    time.sleep(600)

adamw_step, save_state = torch.optim.AdamW.step, Accelerator.save_state

def step(self, *args, **kwargs):
    calls["step"] += 1
    if kind == "step" and calls["step"] == int(n):
        pause()
    return adamw_step(self, *args, **kwargs)

def save(self, output_dir=None, **kwargs):
    result = save_state(self, output_dir, **kwargs)
    calls["save"] += 1
    if kind == "save" and calls["save"] == int(n):
        model = Path(output_dir) / "model.safetensors"
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
        pause()
    return result

torch.optim.AdamW.step, Accelerator.save_state = step, save
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, list[str]]:
    """Tiny data and a random tiny teacher, and the recipe arguments that use them."""
    tmp = tmp_path_factory.mktemp("kill")
    data = generate_synthetic(tmp / "data", SyntheticConfig(num_train=56, num_test=16, size=32, seconds=4))  # tiny.DATA
    torch.manual_seed(0)
    config = TeacherConfig(
        max_frames=4, image_size=16, vision_width=64, vision_layers=1, text_width=64, text_layers=1, cross_layers=1
    )
    save_teacher(CLIP4Clip(teacher_arch(config, max_words=32)), tmp / "teacher.safetensors")
    return tmp, [
        str(REPO / "recipes" / "demo.yaml"),
        f"data.root={data}",
        f"teacher.source={tmp / 'teacher.safetensors'}",
        *TINY,
    ]


def environment(cwd: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(cwd / ".hf_home")}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(REPO / "distill" / "run.py"), *args],
        cwd=cwd,
        env=environment(cwd),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def run_and_kill(args: list[str], cwd: Path, pause_at: str) -> None:
    marker = cwd / f"paused-{pause_at.replace(':', '-')}"
    env = {**environment(cwd), "PAUSE_AT": pause_at, "PAUSE_MARKER": str(marker)}
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert child.poll() is None, f"the run ended before pausing at {pause_at}: {child.stderr.read()[-3000:]}"
            assert time.monotonic() < deadline, f"no pause at {pause_at} within 120 s"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL


def logged_steps(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "distill_log.jsonl").read_text().splitlines()]


def test_killed_runs_resume_to_the_uninterrupted_student(setup):
    tmp, args = setup
    run([*args, f"output_dir={tmp / 'whole'}"], tmp)
    killed = tmp / "killed"
    checkpoints = killed / "checkpoints" / "distill"

    # Killed while writing the step-4 checkpoint: its folder is half written and must be ignored.
    run_and_kill([*args, f"output_dir={killed}"], tmp, "save:2")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "partial_4"]
    assert logged_steps(killed) == [1, 2, 3, 4]
    # Resumed from step 2, then killed in the middle of step 5 (the third step of this process).
    run_and_kill([*args, f"output_dir={killed}", "train.resume=auto"], tmp, "step:3")
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint_2", "checkpoint_4"]
    assert logged_steps(killed) == [1, 2, 3, 4]
    done = run([*args, f"output_dir={killed}", "train.resume=auto"], tmp)
    assert f"distill: resumed from {checkpoints / 'checkpoint_4'} at step 4" in done.stdout
    assert logged_steps(killed) == [1, 2, 3, 4, 5, 6]

    whole, resumed = load_file(tmp / "whole" / "student.safetensors"), load_file(killed / "student.safetensors")
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(resumed[name], whole[name], rtol=0, atol=0, msg=name)  # bitwise
    logs = [
        [json.loads(line) for line in (d / "distill_log.jsonl").read_text().splitlines()]
        for d in (tmp / "whole", killed)
    ]
    for a, b in zip(*logs, strict=True):
        assert b["loss"] == a["loss"], b["step"]
