"""Strict recipe loading: defaults, nesting, overrides, error messages and the save/load round trip."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

import pytest

from distill.core.config import RecipeError, load_dataclass, recipe_to_dict, save_recipe
from distill.core.schema import Recipe, TrainConfig
from distill.recipe import load_recipe


@dataclass
class Inner:
    mode: Literal["fast", "slow"] = "fast"
    ratio: float = 0.5


@dataclass
class Outer:
    count: int = 3
    label: str | None = "x"
    flag: bool = False
    tags: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def error(cls, path, overrides=()) -> str:
    with pytest.raises(RecipeError) as info:
        load_dataclass(cls, path, overrides)
    return str(info.value)


def test_empty_file_gives_defaults(tmp_path):
    assert load_dataclass(Recipe, write(tmp_path, "")) == Recipe()
    assert load_dataclass(Outer, write(tmp_path, "# only a comment\n")) == Outer()


def test_nested_values_and_defaults_kept(tmp_path):
    path = write(tmp_path, "name: tiny\ntrain:\n  lr: 0.01\n  epochs: 2\nteacher:\n  train:\n    batch_size: 8\n")
    recipe = load_dataclass(Recipe, path)
    assert recipe.name == "tiny"
    assert recipe.train == TrainConfig(lr=0.01, epochs=2)
    assert recipe.teacher.train.batch_size == 8
    assert recipe.teacher.train.lr == TrainConfig().lr
    assert recipe.data.synthetic.size == 64


def test_types_are_converted_and_kept(tmp_path):
    path = write(tmp_path, "count: 7\nlabel: null\nflag: true\ntags: [a, b]\nextra: {k: [1, 2]}\ninner: {ratio: 2}\n")
    outer = load_dataclass(Outer, path)
    assert outer == Outer(count=7, label=None, flag=True, tags=["a", "b"], extra={"k": [1, 2]}, inner=Inner(ratio=2.0))
    assert type(outer.inner.ratio) is float


def test_overrides_nested_list_float_and_null(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n  epochs: 5\nteacher:\n  source: open_clip:ViT-B-32\n")
    overrides = ["train.lr=1e-3", "stages=[distill,evaluate]", "teacher.source=null", "loss.kl_weight=3e4"]
    recipe = load_dataclass(Recipe, path, overrides)
    assert recipe.train.lr == pytest.approx(0.001) and type(recipe.train.lr) is float
    assert recipe.train.epochs == 5  # the rest of the YAML mapping survives the override
    assert recipe.stages == ["distill", "evaluate"]
    assert recipe.teacher.source is None
    assert recipe.loss.kl_weight == 30000.0


def test_override_creates_missing_sections_and_dict_entries(tmp_path):
    recipe = load_dataclass(Recipe, write(tmp_path, ""), ["data.synthetic.size=16", "student.backbone_kwargs.depth=2"])
    assert recipe.data.synthetic.size == 16
    assert recipe.student.backbone_kwargs == {"depth": 2}


def test_later_override_wins(tmp_path):
    assert load_dataclass(Outer, write(tmp_path, "count: 1\n"), ["count=2", "count=3"]).count == 3


def test_typo_in_yaml_names_path_and_suggestion(tmp_path):
    message = error(Recipe, write(tmp_path, "train:\n  bach_size: 8\n"))
    assert message == "unknown key 'train.bach_size'; did you mean 'train.batch_size'?"
    message = error(Recipe, write(tmp_path, "data:\n  synthetic:\n    num_trian: 8\n"))
    assert message == "unknown key 'data.synthetic.num_trian'; did you mean 'data.synthetic.num_train'?"


def test_typo_in_override_names_path_and_suggestion(tmp_path):
    message = error(Recipe, write(tmp_path, ""), ["teacher.max_frame=4"])
    assert message == "unknown key 'teacher.max_frame'; did you mean 'teacher.max_frames'?"
    assert error(Recipe, write(tmp_path, ""), ["trian.lr=1"]) == "unknown key 'trian'; did you mean 'train'?"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = error(Outer, write(tmp_path, "inner:\n  zzz: 1\n"))
    assert message == "unknown key 'inner.zzz'; valid keys in 'inner': mode, ratio"
    assert "valid keys: count, label, flag, tags, extra, inner" in error(Outer, write(tmp_path, "zzz: 1\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("seed: abc", "seed: expected int, got 'abc' (str)"),
        ("seed: true", "seed: expected int, got True (bool)"),
        ("seed: 1.5", "seed: expected int, got 1.5 (float)"),
        ("train:\n  lr: fast", "train.lr: expected float, got 'fast' (str)"),
        ("name: 12", "name: expected str, got 12 (int)"),
        ("name: {a: 1}", "name: expected str, got {'a': 1} (dict)"),
        ("train: 3", "train: expected a mapping of TrainConfig fields, got 3 (int)"),
        ("data:\n  synthetic: big", "data.synthetic: expected a mapping of SyntheticConfig fields, got 'big' (str)"),
        ("stages: distill", "stages: expected a list, got 'distill' (str)"),
        ("student:\n  backbone_kwargs: [1]", "student.backbone_kwargs: expected a mapping, got [1] (list)"),
        ("train:\n  max_steps: abc", "train.max_steps: expected int, got 'abc' (str)"),
    ],
)
def test_wrong_types_name_key_expected_and_value(tmp_path, text, expected):
    assert error(Recipe, write(tmp_path, text + "\n")) == expected


def test_bool_field_takes_only_yaml_bools(tmp_path):
    assert error(Outer, write(tmp_path, "flag: 1\n")) == "flag: expected bool, got 1 (int)"
    assert load_dataclass(Outer, write(tmp_path, "flag: yes\n")).flag is True


def test_literal_choices(tmp_path):
    assert load_dataclass(Recipe, write(tmp_path, "mixed_precision: bf16\n")).mixed_precision == "bf16"
    message = error(Recipe, write(tmp_path, "mixed_precision: bf61\n"))
    assert message == "mixed_precision: 'bf61' is not one of 'no', 'fp16', 'bf16'; did you mean 'bf16'?"
    message = error(Recipe, write(tmp_path, ""), ["stages=[data,distil]"])
    assert message.startswith("stages[1]: 'distil' is not one of 'data', 'prepare', 'teacher', 'cache', 'distill'")
    assert message.endswith("; did you mean 'distill'?")
    assert error(Outer, write(tmp_path, "inner: {mode: zzzz}\n")) == "inner.mode: 'zzzz' is not one of 'fast', 'slow'"


def test_int_literal_rejects_bools_and_strings(tmp_path):
    assert load_dataclass(Recipe, write(tmp_path, "data:\n  slice_framepos: 0\n")).data.slice_framepos == 0
    assert error(Recipe, write(tmp_path, "data:\n  slice_framepos: true\n")).startswith(
        "data.slice_framepos: True is not one of 0, 1, 2"
    )
    assert error(Recipe, write(tmp_path, "data:\n  slice_framepos: '1'\n")) == (
        "data.slice_framepos: '1' is not one of 0, 1, 2; did you mean 1?"
    )


def test_optional_literal(tmp_path):
    assert load_dataclass(Recipe, write(tmp_path, ""), ["train.resume=auto"]).train.resume == "auto"
    assert error(Recipe, write(tmp_path, ""), ["train.resume=yes"]) == "train.resume: True is not one of 'auto'"


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error(Recipe, missing) == f"cannot read recipe {missing}: No such file or directory"


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "name: ok\ntrain:\n  lr: [1, 2\n  epochs: 3\n")
    message = error(Recipe, path)
    assert message.startswith(f"{path}, line ")
    assert "malformed YAML" in message
    assert error(Recipe, write(tmp_path, "a: b: c\n")).startswith(f"{path}, line 1: malformed YAML")


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- a\n- b\n")
    assert error(Recipe, path) == f"{path}: the top level must be a mapping of keys, got list"


@pytest.mark.parametrize("override", ["train.lr", "=3", "train..lr=3", "train.=1"])
def test_malformed_override(tmp_path, override):
    expected = f"override {override!r}: expected dotted.key=value, e.g. train.lr=1e-3"
    assert error(Recipe, write(tmp_path, ""), [override]) == expected


def test_override_through_a_scalar(tmp_path):
    message = error(Recipe, write(tmp_path, "train:\n  lr: 0.1\n"), ["train.lr.x=1"])
    assert message == "override 'train.lr.x=1': 'train.lr' is not a mapping"


def test_override_with_malformed_value(tmp_path):
    message = error(Recipe, write(tmp_path, ""), ["stages=[data"])
    assert message.startswith("override 'stages=[data': malformed YAML value")


def test_save_load_round_trip(tmp_path):
    overrides = [
        "train.lr=1e-5",
        "stages=[data,teacher,distill]",
        "student.backbone_kwargs={depth: 2}",
        "train.resume=auto",
        "data.slice_framepos=0",
        "output_dir=runs/x",
    ]
    recipe = load_dataclass(Recipe, write(tmp_path, "name: rt\n"), overrides)
    saved = tmp_path / "resolved.yaml"
    save_recipe(recipe, saved)
    assert load_dataclass(Recipe, saved) == recipe
    assert saved.read_text().startswith("name: rt\noutput_dir: runs/x\n")  # field order, not sorted
    assert recipe_to_dict(recipe)["train"]["lr"] == pytest.approx(1e-5)


def test_load_recipe_uses_the_strict_loader(tmp_path):
    path = write(tmp_path, "")
    assert load_recipe(path, ["stages=[data,teacher]"]).stages == ["data", "teacher"]
    with pytest.raises(RecipeError, match=r"^unknown key 'train.bach_size'; did you mean 'train.batch_size'\?$"):
        load_recipe(path, ["train.bach_size=1"])
    message = r"^stages: \['distill', 'data'\] must be a non-empty list of distinct stages in the order"
    with pytest.raises(RecipeError, match=message):
        load_recipe(path, ["stages=[distill,data]"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.accumulate=0", "train.accumulate: must be positive, got 0"),
        ("loss.kl_temperature=0.0", "loss.kl_temperature: must be positive, got 0.0"),
        ("loss.cross_weight=-1.0", "loss.cross_weight: must be zero or more, got -1.0"),
    ],
)
def test_values_out_of_range_name_the_key(tmp_path, override, message):
    (tmp_path / "r.yaml").write_text("stages: [data]\n")
    with pytest.raises(RecipeError, match=f"^{re.escape(message)}$"):
        load_recipe(tmp_path / "r.yaml", [override])


@pytest.mark.parametrize("term", ["feature_weight", "cross_weight", "teacher_logit_scale"])
def test_tight_teacher_refuses_terms_that_need_embeddings(tmp_path, term):
    (tmp_path / "r.yaml").write_text("stages: [data, teacher, distill]\n")
    overrides = ["teacher.sim_header=tightTransf", "loss.feature_weight=0", f"loss.{term}=50.0"]
    with pytest.raises(RecipeError, match=f"^loss.{term}: a tightTransf teacher has no embeddings to match"):
        load_recipe(tmp_path / "r.yaml", overrides)
