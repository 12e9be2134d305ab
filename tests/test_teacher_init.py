"""teacher.init: the teacher stage fine-tunes a loaded teacher instead of training one from random weights."""

from pathlib import Path

import pytest
import torch
from tiny import TINY

from distill.pipeline import run_recipe
from distill.recipe import RecipeError, load_recipe
from teachers import load_teacher

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"


def test_fine_tunes_the_loaded_teacher_with_its_clip_at_coef_lr(tmp_path):
    common = [*TINY, f"data.root={tmp_path / 'data'}", "stages=[data,teacher]"]
    run_recipe(load_recipe(DEMO, [*common, f"output_dir={tmp_path / 'first'}"]))
    first = tmp_path / "first" / "teacher.safetensors"
    # coef_lr 0 holds the CLIP weights where they were; the temporal head trains at the full lr. The
    # architecture keys of the recipe do not apply: the loaded teacher keeps its own.
    overrides = [f"teacher.init={first}", "teacher.train.coef_lr=0", "teacher.vision_layers=3"]
    run = run_recipe(load_recipe(DEMO, [*common, *overrides, f"output_dir={tmp_path / 'tuned'}"]))
    before, after = load_teacher(first).state_dict(), load_teacher(tmp_path / "tuned" / "teacher.safetensors")
    assert run.teacher.clip.visual.transformer.layers == 1 and not run.teacher.fine_tuning
    for name, value in after.state_dict().items():
        if name.startswith("clip."):
            assert torch.equal(value, before[name]), name
    head = [n for n in before if n.startswith(("transformerClip.", "frame_position_embeddings."))]
    assert head and all(not torch.equal(after.state_dict()[n], before[n]) for n in head)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["teacher.init=missing.safetensors"], "teacher.init: no such file: missing.safetensors"),
        (["teacher.init={file}", "teacher.source={file}"], "teacher.init and teacher.source are both set"),
        (["teacher.init={file}", "teacher.source=null", "stages=[data,distill]"], "teacher.init: the 'teacher' stage"),
    ],
)
def test_recipe_errors_name_teacher_init(tmp_path, overrides, message):
    file = tmp_path / "teacher.safetensors"
    file.write_bytes(b"")
    with pytest.raises(RecipeError, match=message):
        load_recipe(DEMO, [f"data.root={tmp_path}", *[o.format(file=file) for o in overrides]])
