"""`c4cd`, the toolkit's one console script: a subcommand for each command, each the same as its documented
spelling (`c4cd run` is `distill/run.py`, `c4cd index` is `python -m distill.index`, ...).

    c4cd run recipes/demo.yaml [dotted.key=value ...]     train: the recipe's stages (distill/run.py)
    c4cd check RECIPE [k=v ...]                           list every problem of a recipe's data
    c4cd prepare RECIPE [k=v ...]                         decode the videos once into frame shards
    c4cd config RECIPE [k=v ...] | --keys                 the resolved recipe as YAML, or every key
    c4cd index MODEL VIDEOS -o INDEX                      embed a folder of videos for search
    c4cd search INDEX "a caption" [--html page.html]      search it
    c4cd export-onnx STUDENT -o OUT_DIR                   the student's encoders as ONNX files

Every subcommand is parsed before torch loads (`distill.core.commands` holds the parsers), so `--help` answers
at once; `run` hands its arguments to `distill/run.py`, whose own parser reads them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from distill.core.commands import COMMANDS, Formatter, add_version, new_parser

RUN_HELP = "train: run a recipe's stages (distill/run.py RECIPE.yaml [dotted.key=value ...]; c4cd run --help)"


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("c4cd", __doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", help=RUN_HELP, add_help=False)  # listed here, parsed by distill/run.py
    for name, (description, add_arguments, _, _) in COMMANDS.items():
        command = commands.add_parser(name, help=description, description=description, formatter_class=Formatter)
        add_arguments(command)
        add_version(command)
        command.set_defaults(subparser=command)  # for usage errors found after parsing
    return parser


def config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """`c4cd config`: the recipe as `distill/run.py` would run it, or the key table."""
    from distill.core.config import RecipeError, load_dataclass, recipe_to_dict
    from distill.core.schema import Recipe
    from distill.keys import key_table

    if args.keys:
        if args.recipe is not None:
            parser.error("--keys lists every key of the schema: give no recipe with it")
        print(key_table())
        return 0
    if args.recipe is None:
        parser.error("give a recipe (c4cd config RECIPE.yaml [dotted.key=value ...]) or --keys")
    import yaml

    try:
        recipe = load_dataclass(Recipe, args.recipe, args.overrides)
    except RecipeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["run"]:  # every argument, --help included, is distill/run.py's
        from distill.run import main as run_main

        return run_main(argv[1:], prog="c4cd run")
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors here, before anything heavy loads
    rest = argv[argv.index(args.command) + 1 :]
    if args.command == "config":
        return config(args, args.subparser)
    if args.command == "check":
        rest = ["--check", *rest]
    return importlib.import_module(COMMANDS[args.command][2]).main(rest)


if __name__ == "__main__":
    sys.exit(main())
