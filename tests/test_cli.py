"""The command line: one console script (`c4cd`) whose subcommands are the documented commands, with flags spelt
alike across them, `--help` answered before torch loads, `--version`, and `c4cd config`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from distill import __version__, cli
from distill.core import commands
from distill.core.config import load_dataclass
from distill.core.schema import Recipe

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "timm", "open_clip", "decord", "onnxruntime", "faiss")


def subcommand_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {s: a for a in parser._actions for s in a.option_strings}


def test_console_script_and_version_come_from_one_place():
    project = (REPO / "pyproject.toml").read_text()  # tomllib is Python 3.11+
    assert '[project.scripts]\nc4cd = "distill.cli:main"\n' in project
    assert 'dynamic = ["version"]' in project and 'version = {attr = "distill.__version__"}' in project
    assert set(subcommand_parsers()) == {"run", "check", "prepare", "config", "index", "search", "export-onnx"}


def test_flags_are_spelt_alike_across_commands():
    """Every command has --version; what it writes is -o/--out; workers are --num-workers (data.num_workers);
    a flag that two commands share takes the same values there (type, choices); flags use dashes."""
    parsers = {name: p for name, p in subcommand_parsers().items() if name != "run"}
    parsers["run"] = commands.new_parser("c4cd run", "")
    commands.add_recipe_arguments(parsers["run"])
    seen: dict[str, tuple[str, argparse.Action]] = {}
    for name, parser in parsers.items():
        flags = options(parser)
        assert "--version" in flags, name
        for flag, action in flags.items():
            assert "_" not in flag and flag not in ("--output", "--out-dir", "--output-dir"), (name, flag)
            if flag == "--workers":  # the old spelling, kept beside the recipe's
                assert flags["--num-workers"] is action, name
            if flag == "--out":
                assert flags["-o"] is action, f"{name}: --out without -o"
            if flag.startswith("--") and flag in seen:
                other, first = seen[flag]
                same = (action.type, action.choices, action.nargs)  # defaults may differ: search's --runtime
                assert same == (first.type, first.choices, first.nargs), (name, other, flag)  # is the index's
            seen.setdefault(flag, (name, action))
    # the model (or the index, or the recipe) comes first
    first = {
        name: next(a.dest for a in p._actions if not a.option_strings and a.dest != "help")
        for name, p in parsers.items()
    }
    assert first == {
        "run": "recipe",
        "check": "recipe",
        "prepare": "recipe",
        "config": "recipe",
        "index": "model",
        "search": "index",
        "export-onnx": "student",
    }
    assert "--workers" in options(parsers["index"])


def test_module_parsers_are_the_subcommands():
    """`python -m distill.index` and `c4cd index` (and the others) parse with the same arguments."""
    for name, parser in subcommand_parsers().items():
        if name in ("run", "check", "config"):
            continue
        module = commands.command_parser(name)
        assert set(options(module)) == set(options(parser)), name
        dests = [a.dest for a in module._actions if not a.option_strings]
        assert dests == [a.dest for a in parser._actions if not a.option_strings], name


def test_help_shows_the_defaults_that_say_something():
    text = commands.command_parser("index").format_help()
    assert "videos a batch (default: 16)" in text and "decoding the videos (default: 0)" in text
    assert "(default: None)" not in text and "(default: False)" not in text


def test_export_onnx_takes_its_folder_positional_or_as_out():
    parser = commands.command_parser("export-onnx")
    for argv in (["s.safetensors", "onnx"], ["s.safetensors", "-o", "onnx"], ["s.safetensors", "--out", "onnx"]):
        assert commands.onnx_out(parser, parser.parse_args(argv)) == Path("onnx")
    for argv in (["s.safetensors"], ["s.safetensors", "a", "-o", "b"]):
        with pytest.raises(SystemExit):
            commands.onnx_out(parser, parser.parse_args(argv))


def test_defaults_the_modules_hold_are_the_parsers():
    from distill.retrieval import ann, encoders

    assert commands.RUNTIMES == encoders.RUNTIMES and commands.NPROBE == ann.NPROBE


def loaded_after(code: str) -> subprocess.CompletedProcess:
    """Runs `code` in a fresh interpreter and prints which heavy modules it loaded."""
    probe = f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass\n"
    probe += f"print(sorted(m for m in {HEAVY} if m in sys.modules))"
    return subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)


HELP_CALLS = {
    **{
        f"c4cd {name} --help": f"from distill.cli import main; main([{name!r}, '--help'])"
        for name in ("run", "check", "prepare", "config", "index", "search", "export-onnx")
    },
    "c4cd --help": "from distill.cli import main; main(['--help'])",
    "distill/run.py --help": "import runpy; sys.argv = ['run.py', '--help']; runpy.run_path('distill/run.py', "
    "run_name='__main__')",
    "python -m distill.index --help": "import runpy; sys.argv = ['x', '--help']; runpy.run_module('distill.index', "
    "run_name='__main__')",
    "python -m distill.search --help": "import runpy; sys.argv = ['x', '--help']; runpy.run_module('distill.search', "
    "run_name='__main__')",
    "python -m distill.prepare --help": "import runpy; sys.argv = ['x', '--help']; "
    "runpy.run_module('distill.prepare', run_name='__main__')",
    "python -m students.onnx --help": "import runpy; sys.argv = ['x', '--help']; "
    "runpy.run_module('students.onnx', run_name='__main__')",
}


@pytest.mark.parametrize("call", list(HELP_CALLS))
def test_help_loads_no_heavy_module(call):
    """--help answers before torch, timm, open_clip (or decord, onnxruntime, faiss) load: the parsers live in
    modules that import nothing heavy."""
    done = loaded_after(HELP_CALLS[call])
    assert done.returncode == 0, done.stderr
    *text, loaded = done.stdout.splitlines()
    assert loaded == "[]", f"{call} loaded {loaded}"
    assert "usage:" in "\n".join(text) and "--version" in "\n".join(text)


def test_version():
    done = subprocess.run(
        [sys.executable, "-m", "distill.cli", "--version"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == f"clip4clip-distill {__version__}"
    done = subprocess.run(
        [sys.executable, "-m", "distill.cli", "index", "--version"], cwd=REPO, capture_output=True, text=True
    )
    assert done.stdout.strip() == f"clip4clip-distill {__version__}"


@pytest.mark.parametrize("recipe", ["demo.yaml", "msrvtt.yaml"])
def test_config_prints_a_recipe_that_loads_back_the_same(recipe, tmp_path, capsys):
    overrides = ["train.lr=3e-4", "stages=[data,distill]", "student.backbone_kwargs={depth: 1}"]
    assert cli.main(["config", str(REPO / "recipes" / recipe), *overrides]) == 0
    printed = capsys.readouterr().out
    (tmp_path / "resolved.yaml").write_text(printed)
    want = load_dataclass(Recipe, REPO / "recipes" / recipe, overrides)
    assert load_dataclass(Recipe, tmp_path / "resolved.yaml") == want
    assert yaml.safe_load(printed)["train"]["lr"] == 3e-4  # every key is there, resolved


def test_config_errors_name_the_key(capsys):
    assert cli.main(["config", str(REPO / "recipes" / "demo.yaml"), "train.bach_size=2"]) == 2
    assert "did you mean 'train.batch_size'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["config"])


def test_config_keys_lists_every_key(capsys):
    from distill.keys import recipe_keys

    assert cli.main(["config", "--keys"]) == 0
    printed = capsys.readouterr().out
    listed = [line.split(" (", 1)[0] for line in printed.splitlines() if not line.startswith(" ")]
    assert listed == [key.name for key in recipe_keys()]
    assert "train.grad_clip (float; default 1.0)" in printed


def test_one_process_on_cpu_says_how_to_use_every_core():
    """accelerate launch pins one thread a process: a one-process run on a machine without a GPU says, in its
    first lines, how to use every core; one at full width, or one of several processes, says nothing."""
    code = "from distill.run import cpu_threads_hint; print(cpu_threads_hint())"
    cores = len(os.sched_getaffinity(0))
    for env, says in (({"OMP_NUM_THREADS": "1"}, cores > 1), ({"OMP_NUM_THREADS": "1", "WORLD_SIZE": "2"}, False)):
        done = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        if says:
            assert f"computing on 1 of {cores} cores" in done.stdout and "c4cd run" in done.stdout
        else:
            assert done.stdout.strip() == "None"


def test_check_and_prepare_subcommands_are_distill_prepare(tmp_path, capsys):
    """`c4cd check` is `python -m distill.prepare --check`: a broken video is listed and the exit code is 1;
    `c4cd prepare` writes the frame shards."""
    import json

    import numpy as np

    from distill.data.synthetic import write_mp4

    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(2):
        write_mp4(videos / f"v{i}.mp4", np.full((4, 32, 32, 3), 60 * i, np.uint8), fps=4)
    (tmp_path / "train.jsonl").write_text(json.dumps({"video": "v0.mp4", "caption": "zero"}) + "\n")
    (tmp_path / "test.jsonl").write_text(json.dumps({"video": "v1.mp4", "caption": "one"}) + "\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"name: check\noutput_dir: {tmp_path / 'run'}\nstages: [data]\ndata:\n  format: jsonl\n"
        f"  train: {tmp_path / 'train.jsonl'}\n  test: {tmp_path / 'test.jsonl'}\n  video_root: {videos}\n"
    )
    assert cli.main(["check", str(recipe)]) == 0
    assert "no problems found" in capsys.readouterr().out
    (videos / "v1.mp4").write_bytes(b"\x00" * 100)
    assert cli.main(["check", str(recipe)]) == 1
    assert f"cannot open video {videos / 'v1.mp4'}" in capsys.readouterr().out
    write_mp4(videos / "v1.mp4", np.full((4, 32, 32, 3), 60, np.uint8), fps=4)
    assert cli.main(["prepare", str(recipe), "data.val_fraction=0"]) == 0
    assert "2 videos in 1 shards" in capsys.readouterr().out
    assert (tmp_path / "run" / "frames" / "manifest.json").is_file()


def test_index_search_and_export_onnx_subcommands(tmp_path, capsys):
    """The ship side through `c4cd`: export-onnx (OUT_DIR as -o), index (-o, --num-workers) and search --json
    give what their `python -m` spellings give."""
    import json

    import numpy as np
    import torch
    from tiny import student_config

    from distill.data.synthetic import write_mp4
    from students import Student, export_student

    torch.manual_seed(0)
    student = tmp_path / "student.safetensors"
    preprocessing = {"max_frames": 2, "image_size": 16, "max_words": 16, "framerate": 1, "slice_framepos": 2}
    export_student(
        Student(student_config(max_frames=2), max_words=16), student, {"preprocessing": json.dumps(preprocessing)}
    )
    videos = tmp_path / "videos"
    (videos / "deep").mkdir(parents=True)
    for i, name in enumerate(["a.mp4", "deep/b.mp4"]):
        write_mp4(videos / name, np.full((8, 32, 32, 3), 90 * i, np.uint8), fps=4)
    assert cli.main(["index", str(student), str(videos), "-o", str(tmp_path / "index"), "--num-workers", "0"]) == 0
    assert "2 videos embedded" in capsys.readouterr().out
    assert cli.main(["search", str(tmp_path / "index"), "a caption", "--top", "2", "--json"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(h["path"] for h in hits) == [str((videos / n).resolve()) for n in ("a.mp4", "deep/b.mp4")]
    assert cli.main(["export-onnx", str(student), "-o", str(tmp_path / "onnx")]) == 0
    assert {p.name for p in (tmp_path / "onnx").iterdir()} >= {"video_encoder.onnx", "text_encoder.onnx"}
