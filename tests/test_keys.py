"""The recipe reference: docs/recipes.md is generated from the schema's field comments, lists every key and no
other, and is up to date; every recipe key the README and the docs name exists."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from distill import keys
from distill.core.schema import Recipe

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("data", "teacher", "student", "loss", "train", "eval", "export")
FILE_SUFFIXES = {"safetensors", "yaml", "bin", "json", "jsonl", "md", "png", "onnx", "pt", "pth", "csv", "txt", "mp4"}


def schema_keys(cls: type = Recipe, prefix: str = "") -> tuple[set[str], set[str]]:
    """(leaf keys, section names) of the schema, walked with dataclasses alone (not the code under test)."""
    leaves, sections = set(), set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            sections.add(prefix + f.name)
            more, inner = schema_keys(hints[f.name], f"{prefix}{f.name}.")
            leaves |= more
            sections |= inner
        else:
            leaves.add(prefix + f.name)
    return leaves, sections


def test_every_key_has_a_comment_in_the_schema():
    assert keys.undocumented() == []
    assert {key.name for key in keys.recipe_keys()} == schema_keys()[0]


def test_a_field_without_a_comment_is_found():
    @dataclasses.dataclass
    class Sample:
        # above, on two
        # lines
        first: int = 1
        second: str = "x"  # at the end
        third: float = 0.5

    assert keys.field_comments(Sample) == {"first": "above, on two lines", "second": "at the end", "third": ""}


def test_recipes_page_lists_every_key_and_no_other():
    page = (REPO / "docs" / "recipes.md").read_text()
    listed = re.findall(r"^\| `([a-z_.]+)` \|", page, flags=re.MULTILINE)
    stages = {"data", "prepare", "teacher", "cache", "distill", "evaluate", "export"}
    assert sorted(k for k in listed if k not in stages) == sorted(schema_keys()[0])


def test_recipes_page_is_up_to_date():
    """docs/recipes.md is what `python -m distill.keys` writes now: run it after editing a schema comment."""
    assert (REPO / "docs" / "recipes.md").read_text() == keys.recipes_page()
    assert keys.main(["--check"]) == 0


def test_the_demo_column_holds_the_demo_values():
    page = (REPO / "docs" / "recipes.md").read_text()
    assert "| `train.epochs` | int | `10` | `20` |" in page and "| `teacher.train.epochs` | int | `10` | `6` |" in page
    assert "| `data.keep_decoded` | bool | `false` | `true` |" in page
    assert "| `train.grad_clip` | float | `1.0` |  |" in page  # the demo keeps the default


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]
)
def test_keys_the_docs_name_exist(page):
    """A recipe key written in backticks (`train.lr`, `student.text=teacher`) in the README or a docs page is a key
    or a section of the schema: renamed or removed keys do not linger in the docs."""
    leaves, sections = schema_keys()
    text = (REPO / page).read_text()
    found = set()
    for span in re.findall(r"`([^`\n]+)`", text):
        for name in re.findall(rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})(?:\.[a-z_]+)+)", span):
            if name.rsplit(".", 1)[-1] not in FILE_SUFFIXES:
                found.add(name)
    unknown = sorted(name for name in found if name not in leaves | sections)
    assert unknown == [], f"{page} names keys the schema lacks: {unknown}"
