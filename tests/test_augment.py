"""Random crops for the teacher stage (teacher.crop_scale): one crop a clip, drawn from its pair index."""

from pathlib import Path

import pytest
import torch
from tiny import TINY

from distill.pipeline import run_recipe
from distill.recipe import RecipeError, load_recipe
from distill.training.augment import crop_box, random_crops

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo.yaml"


def ramp_batch(indices: list[int], frames: int = 3, size: int = 16) -> dict[str, torch.Tensor]:
    """Clips whose first channel is each pixel's column (x), the second its row (y); the same every frame."""
    y, x = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    frame = torch.stack([x, y, x + y]).float()
    video = frame.expand(len(indices), frames, 3, size, size).clone()
    return {"index": torch.tensor(indices), "teacher_video": video, "student_video": video.clone()}


def test_a_crop_is_one_box_for_every_frame_at_least_scale_of_each_side():
    batch = ramp_batch(list(range(20)))
    out = random_crops(batch, 0, view="teacher", scale=0.5, seed=0)["teacher_video"]
    assert out.shape == batch["teacher_video"].shape
    for clip, index in zip(out, range(20)):
        assert all(torch.equal(frame, clip[0]) for frame in clip)  # the same crop in every frame
        top, left, h, w = crop_box(0.5, 16, 16, torch.Generator().manual_seed(index))
        assert 8 <= h == w <= 16 and 0 <= top <= 16 - h and 0 <= left <= 16 - w
        # bilinear resizing is linear in the coordinates and clamps at the edges: the box's columns and rows
        x, y = clip[0, 0], clip[0, 1]
        assert (x.min().item(), x.max().item()) == pytest.approx((left, left + w - 1), abs=1e-4)
        assert (y.min().item(), y.max().item()) == pytest.approx((top, top + h - 1), abs=1e-4)
    returned = random_crops(batch, 0, view="teacher", scale=0.5, seed=0)["student_video"]
    assert torch.equal(returned, ramp_batch(list(range(20)))["student_video"])  # the other view as it was


def test_crops_follow_the_pair_not_the_batch_and_change_each_epoch():
    forward = random_crops(ramp_batch([3, 5, 8]), 2, view="teacher", scale=0.6, seed=1)["teacher_video"]
    backward = random_crops(ramp_batch([8, 5, 3]), 2, view="teacher", scale=0.6, seed=1)["teacher_video"]
    assert torch.equal(forward, backward.flip(0))  # any order, any split of the batch over processes
    other_epoch = random_crops(ramp_batch([3, 5, 8]), 3, view="teacher", scale=0.6, seed=1)["teacher_video"]
    assert not torch.equal(forward, other_epoch)
    whole = ramp_batch([3])
    assert torch.equal(
        random_crops(whole, 0, view="teacher", scale=1.0, seed=0)["teacher_video"], whole["teacher_video"]
    )


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_crop_scale_outside_zero_to_one_is_refused(tmp_path, value):
    with pytest.raises(RecipeError, match=f"teacher.crop_scale: must be in \\(0, 1\\], got {float(value)}"):
        load_recipe(DEMO, [f"data.root={tmp_path}", f"teacher.crop_scale={value}"])


def test_crop_scale_with_a_given_teacher_is_refused(tmp_path):
    source = tmp_path / "teacher.safetensors"
    source.write_bytes(b"")
    with pytest.raises(RecipeError, match="teacher.crop_scale: crops are for a teacher trained here"):
        load_recipe(DEMO, [f"data.root={tmp_path}", f"teacher.source={source}", "teacher.crop_scale=0.8"])


def test_teacher_stage_trains_on_crops_reproducibly(tmp_path):
    common = [*TINY, f"data.root={tmp_path / 'data'}", "stages=[data,teacher]"]
    teachers = {}
    for name, scale in (("plain", 1.0), ("crops", 0.7), ("again", 0.7)):
        run = run_recipe(load_recipe(DEMO, [*common, f"teacher.crop_scale={scale}", f"output_dir={tmp_path / name}"]))
        teachers[name] = run.teacher.state_dict()
    assert all(torch.equal(v, teachers["again"][k]) for k, v in teachers["crops"].items())
    assert any(not torch.equal(v, teachers["plain"][k]) for k, v in teachers["crops"].items())
