"""The argument parsers of every command, in one place and with nothing heavy imported, so that `--help` answers
before torch, timm or open_clip load and the flags stay alike across commands.

Conventions every parser follows: the model (or the index, or the recipe) comes first; `-o/--out` names
what a command writes; `--num-workers` is the recipe's `data.num_workers`; `--version`; defaults shown in
`--help`. The modules that do the work (`distill.retrieval.index`, `distill.retrieval.search`,
`distill.prepare`, `students.onnx`) parse with these, and `c4cd` (`distill.cli`) builds its subcommands
from the same functions.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from distill import __version__

RUNTIMES = ("torch", "onnx")  # distill.retrieval.encoders.RUNTIMES, without importing torch
NPROBE = 32  # distill.retrieval.ann.NPROBE: FAISS cells a search scores


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (those that say something: not None, not an off switch), and descriptions kept as written
    (they hold usage examples)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if any(action.default is nothing for nothing in (None, False, argparse.SUPPRESS)) or action.default == []:
            return action.help  # `is`: a default of 0 (--num-workers) is shown
        return super()._get_help_string(action)


def new_parser(prog: str | None, description: str) -> argparse.ArgumentParser:
    """A parser with the shared formatter and `--version`."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=Formatter)
    add_version(parser)
    return parser


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"clip4clip-distill {__version__}")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """`RECIPE.yaml [dotted.key=value ...]`, as `distill.recipe.parse_recipe_args` reads them."""
    parser.add_argument("recipe", help="YAML recipe, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.max_steps=20 (docs/recipes.md)")


def add_check_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--check", action="store_true", help="only inspect: list every problem of the annotations and videos"
    )


def add_prepare_arguments(parser: argparse.ArgumentParser) -> None:
    add_check_flag(parser)
    add_recipe_arguments(parser)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """`c4cd check`: `python -m distill.prepare --check` under its own name."""
    add_recipe_arguments(parser)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", nargs="?", help="YAML recipe to resolve, e.g. recipes/demo.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value, e.g. train.max_steps=20")
    parser.add_argument("--keys", action="store_true", help="print every recipe key: type, default, meaning")


def add_index_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a student export, a teacher source, or (--runtime onnx) an ONNX folder")
    parser.add_argument("videos", type=Path, help="a folder of videos (searched recursively), a .jsonl or .csv list")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the index folder")
    parser.add_argument("--segment", type=int, help="cut each video into segments of this many seconds")
    parser.add_argument("--runtime", choices=RUNTIMES, default="torch", help="how the model runs")
    parser.add_argument("--faiss", action="store_true", help="also build an approximate (FAISS) index")
    parser.add_argument("--batch-size", type=int, default=16, help="videos a batch")
    parser.add_argument(
        "--num-workers", "--workers", type=int, default=0, help="DataLoader processes decoding the videos"
    )


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("index", type=Path, help="an index folder written by c4cd index (python -m distill.index)")
    parser.add_argument("caption", nargs="?", help="what to look for, in words")
    parser.add_argument("--video", type=Path, help="a video to find the nearest entries of, instead of a caption")
    parser.add_argument("--top", type=int, default=5, help="how many entries to show")
    parser.add_argument("--json", action="store_true", help="one JSON object a line, best first")
    parser.add_argument("--html", type=Path, help="also write a results page with the frames of each hit")
    parser.add_argument("--also", type=Path, action="append", default=[], help="another index of the same space")
    parser.add_argument("--model", help="embed the query with this model (of the index's space)")
    parser.add_argument("--runtime", choices=RUNTIMES, help="the runtime of --model (torch) or the index's own")
    parser.add_argument("--exact", action="store_true", help="scan the whole gallery even with a FAISS index")
    parser.add_argument("--nprobe", type=int, default=NPROBE, help="cells a FAISS search scores")


def add_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("student", type=Path, help="an exported student (.safetensors, or its model card folder)")
    parser.add_argument("out_dir", nargs="?", type=Path, metavar="OUT_DIR", help="the folder for the .onnx files")
    parser.add_argument("-o", "--out", type=Path, help="the folder for the .onnx files (or OUT_DIR)")
    parser.add_argument("--int8", action="store_true", help="also write int8 encoders to OUT/int8 (needs --data)")
    parser.add_argument("--data", type=Path, help="a .jsonl or .csv list of video and caption to calibrate and gate on")
    parser.add_argument(
        "--val-fraction", type=float, help="gate on this held-out share of --data, calibrate on the rest"
    )


def onnx_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Path:
    """The folder `export-onnx` writes: OUT_DIR or `-o/--out`, exactly one of them; `--int8` needs `--data`."""
    if (args.out_dir is None) == (args.out is None):
        parser.error("give the output folder once: OUT_DIR or -o/--out")
    if args.int8 and args.data is None:
        parser.error("--int8 needs --data LIST: the clips its calibration and quality gates read")
    return args.out_dir or args.out


# name: (what it does, its arguments, the module whose main(argv) runs it, the `python -m` spelling)
COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], str, str]] = {
    "check": (
        "check a recipe's data: list every bad annotation line and broken video, exit 1 if there is any",
        add_check_arguments,
        "distill.prepare",
        "python -m distill.prepare --check",
    ),
    "prepare": (
        "decode every video of a recipe once into frame shards that training reads instead",
        add_prepare_arguments,
        "distill.prepare",
        "python -m distill.prepare",
    ),
    "config": (
        "print a recipe resolved (defaults and overrides filled in) as YAML, or every key with --keys",
        add_config_arguments,
        "distill.cli",
        "c4cd config",
    ),
    "index": (
        "embed a folder of videos with a model into an index folder for search",
        add_index_arguments,
        "distill.retrieval.index",
        "python -m distill.index",
    ),
    "search": (
        "search an index by caption or by video: a table, JSON lines or an HTML page",
        add_search_arguments,
        "distill.retrieval.search",
        "python -m distill.search",
    ),
    "export-onnx": (
        "write a student's video and text encoders as ONNX files",
        add_onnx_arguments,
        "students.onnx",
        "python -m students.onnx",
    ),
}


def command_parser(name: str) -> argparse.ArgumentParser:
    """The parser of one command under its `python -m` name (as the module's own main uses it)."""
    description, add_arguments, _, prog = COMMANDS[name]
    parser = new_parser(prog, description)
    add_arguments(parser)
    return parser
