"""teacher.init and student.init: training starts from a loaded teacher or student, not from random weights."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from tiny import TINY

from distill.context import build_student
from distill.pipeline import run_recipe
from distill.recipe import RecipeError, load_recipe
from students import Student, export_student, load_student
from teachers import CLIP4Clip, load_teacher, save_teacher
from teachers.archs import clip4clip_arch

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
    assert run.teacher.clip.visual.transformer.layers == 1
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


def test_student_init_starts_from_the_export(tmp_path):
    common = [*TINY, f"data.root={tmp_path / 'data'}"]
    run_recipe(load_recipe(DEMO, [*common, f"output_dir={tmp_path / 'first'}", "stages=[data,teacher,distill,export]"]))
    first = tmp_path / "first"
    teacher = load_teacher(first / "teacher.safetensors")
    again = [*common, f"teacher.source={first / 'teacher.safetensors'}", "stages=[distill,export]"]
    built = build_student(load_recipe(DEMO, [*again, f"student.init={first / 'student.safetensors'}"]), teacher)
    exported = load_student(first / "student.safetensors").state_dict()
    assert built.state_dict().keys() == exported.keys()
    for name, value in built.state_dict().items():
        assert torch.equal(value, exported[name]), name
    fresh = build_student(load_recipe(DEMO, again), teacher).state_dict()
    assert not torch.equal(fresh["frame_proj.weight"], exported["frame_proj.weight"])
    # Refused when the recipe is read (from the export's header), naming what differs.
    with pytest.raises(RecipeError, match=r"student.init: .* is another student: text_width=32 \(the recipe: 16\)"):
        load_recipe(DEMO, [*again, f"student.init={first / 'student.safetensors'}", "student.text_width=16"])
    with pytest.raises(RecipeError, match="student.init: no such student export: missing"):
        load_recipe(DEMO, [*again, "student.init=missing"])


def test_a_fine_tuned_teacher_keeps_its_unused_parameters_frozen():
    """DDP refuses a parameter without a gradient: tightTransf's CLIP logit scale stays frozen."""
    teacher = CLIP4Clip(clip4clip_arch("test_tiny", "tightTransf")).requires_grad_(False).trainable()
    frozen = [n for n, p in teacher.named_parameters() if not p.requires_grad]
    assert frozen == ["clip.logit_scale"] and teacher.training


def test_student_text_inherit_starts_from_the_teachers_tower_and_ships(tmp_path):
    """`student.text=inherit` through the recipe: two of a given teacher's three text layers (the first and
    the last), its position embeddings, its token embedding factorised to rank 8, the student's own
    projection into its 32-d space, all trainable; the export rebuilds it. A tower that does not fit the
    teacher the recipe trains is refused when the recipe is read."""
    arch = clip4clip_arch("test_tiny", "meanP", context_length=16)
    arch["text_cfg"] = {**arch["text_cfg"], "layers": 3}  # 128 wide, 2 heads
    torch.manual_seed(0)
    teacher = CLIP4Clip(arch).eval()
    save_teacher(teacher, tmp_path / "teacher.safetensors")
    inherit = ["student.text=inherit", "student.text_width=128", "student.text_heads=2", "student.text_layers=2"]
    given = [*TINY, f"data.root={tmp_path}", "data.max_words=16", f"teacher.source={tmp_path / 'teacher.safetensors'}"]
    student = build_student(load_recipe(DEMO, [*given, *inherit, "student.token_rank=8"]), teacher)
    for ours, theirs in zip(student.text.transformer.resblocks, teacher.clip.transformer.resblocks[::2], strict=True):
        assert all(torch.equal(v, theirs.state_dict()[k]) for k, v in ours.state_dict().items())
    assert torch.equal(student.text.positional_embedding, teacher.clip.positional_embedding[:16])
    assert student.text.text_projection.shape == (128, 32)
    assert all(p.requires_grad for p in student.text.parameters())
    path = export_student(student, tmp_path / "student.safetensors", {})
    reloaded = load_student(path).state_dict()
    assert all(torch.equal(value, reloaded[name]) for name, value in student.state_dict().items())
    with pytest.raises(ValueError, match="student.text_width, text_heads: 32, 2, but student.text=inherit"):
        build_student(load_recipe(DEMO, [*given, "student.text=inherit"]), teacher)

    # student.init: this export starts the same student again; one that inherited from a GELU tower of the same
    # sizes (an open_clip teacher) is refused, whose weights would load and run under this teacher's QuickGELU
    def started_from(export: Path) -> Student:
        return build_student(
            load_recipe(DEMO, [*given, *inherit, "student.token_rank=8", f"student.init={export}"]), teacher
        )

    resumed = started_from(path).state_dict()
    assert all(torch.equal(value, resumed[name]) for name, value in student.state_dict().items())
    gelu = Student(student.config, max_words=16, teacher_text=replace(student.teacher_text, quick_gelu=False))
    export_student(gelu, tmp_path / "gelu.safetensors", {})
    refused = r"student.init: .*gelu.safetensors inherited a text tower with quick_gelu=False \(this teacher's: True\)"
    with pytest.raises(ValueError, match=refused):
        started_from(tmp_path / "gelu.safetensors")
    # A given teacher is checked when the run starts, before the run folder, the data and cache stages
    with pytest.raises(ValueError, match=refused):
        gelu_init = [f"student.init={tmp_path / 'gelu.safetensors'}", f"output_dir={tmp_path / 'run'}"]
        run_recipe(
            load_recipe(DEMO, [*given, *inherit, "student.token_rank=8", *gelu_init, f"data.root={tmp_path / 'data'}"])
        )
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    with pytest.raises(ValueError, match="student.text_layers: 4; student.text=inherit takes 1 to the teacher's 3"):
        four = ["student.text_layers=4", f"output_dir={tmp_path / 'run'}", f"data.root={tmp_path / 'data'}"]
        run_recipe(load_recipe(DEMO, [*given, *inherit, *four]))
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()
    # the teacher of TINY, trained by the recipe: 64 wide (1 head), one layer
    with pytest.raises(RecipeError, match="student.text_width, text_heads: 32, 2, .* 64 wide with 1 heads"):
        load_recipe(DEMO, [*TINY, f"data.root={tmp_path}", "student.text=inherit"])
