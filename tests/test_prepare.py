"""`python -m distill.prepare --check RECIPE`: lists every problem of a dataset before training (preparing frame
shards: tests/test_shards.py)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from distill.data.synthetic import write_mp4
from distill.prepare import main


@pytest.fixture
def dataset(tmp_path):
    """A jsonl dataset of three good videos, and a recipe holding only name, output_dir and data."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        write_mp4(videos / f"v{i}.mp4", np.full((4, 32, 32, 3), 60 * i, np.uint8), fps=4)
    train = [
        {"video": "v0.mp4", "caption": "zero"},
        {"video": "v0.mp4", "caption": "zero again"},
        {"video": "v1.mp4", "caption": "one"},
    ]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(t) + "\n" for t in train))
    (tmp_path / "test.jsonl").write_text(json.dumps({"video": "v2.mp4", "caption": "two"}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: check\noutput_dir: {tmp_path / 'run'}\ndata:\n  format: jsonl\n"
        f"  train: {tmp_path / 'train.jsonl'}\n  test: {tmp_path / 'test.jsonl'}\n"
        f"  video_root: {videos}\n"
    )
    return recipe


def test_check_clean_dataset(dataset, capsys):
    assert main(["--check", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "train: 3 pairs of 2 videos are usable; 0 problems" in out
    assert "test: 1 pairs of 1 videos are usable; 0 problems" in out
    assert "no problems found" in out
    assert not (dataset.parent / "run").exists()  # --check only inspects


def test_check_lists_every_problem(dataset, capsys):
    folder = dataset.parent
    (folder / "videos" / "v1.mp4").write_bytes(b"\x00" * 100)
    with (folder / "train.jsonl").open("a") as f:
        f.write('{"video": "v0.mp4", "caption": " "}\n{"video": "gone.mp4", "caption": "missing"}\n{"video": \n')
    assert main(["--check", str(dataset)]) == 1
    out = capsys.readouterr().out
    train = folder / "train.jsonl"
    assert "train: 2 pairs of 1 videos are usable; 4 problems:" in out
    assert f"{train}, line 4: empty caption; pair skipped" in out
    assert f"{train}, line 6: not JSON" in out
    assert f"{train}, line 3: cannot open video {folder / 'videos' / 'v1.mp4'}" in out
    assert f"{train}, line 5: video file not found: {folder / 'videos' / 'gone.mp4'}; 1 pair skipped" in out


def test_check_overrides_and_recipe_errors(dataset, capsys):
    assert main(["--check", str(dataset), "data.backend=pyav"]) == 0
    assert main(["--check", str(dataset), "data.video_root=nowhere"]) == 2
    assert "data.video_root: no such folder: nowhere" in capsys.readouterr().err
    assert main(["--check", str(dataset), "data.formt=csv"]) == 2
    assert "did you mean 'data.format'?" in capsys.readouterr().err


def test_module_entry_point(dataset):
    done = subprocess.run(
        [sys.executable, "-m", "distill.prepare", "--check", str(dataset)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no problems found" in done.stdout
