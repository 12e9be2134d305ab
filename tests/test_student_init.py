"""Full-size students start from weights: ImageNet timm frame encoders and open_clip towers, each loaded from a
local file written here in the exact layout its library saves (random weights: nothing is downloaded)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from distill.core.config import RecipeError
from distill.core.schema import StudentConfig
from distill.recipe import load_recipe
from students import check_student, export_student, load_student
from students.model import Student
from students.towers import CLIP_MEAN, CLIP_STD, open_clip_normalisation
from teachers import tokenize

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "demo.yaml"
CAPTIONS = ["a dog runs on the beach", "a cat sleeps on a sofa", "someone is cooking pasta"]


@pytest.fixture(scope="module")
def timm_files(tmp_path_factory) -> dict[str, Path]:
    """timm's own state dicts (classifier included) of the three 20x frame encoders, random weights; one as
    safetensors, as timm's Hugging Face repos ship them, the others as torch files."""
    folder = tmp_path_factory.mktemp("timm")
    files = {}
    for name, suffix in (
        ("mobilenetv3_large_100", ".pth"),
        ("efficientvit_m2", ".safetensors"),
        ("mobilenetv4_conv_small", ".bin"),
    ):
        torch.manual_seed(0)
        state = timm.create_model(name).state_dict()
        files[name] = folder / f"{name}{suffix}"
        if suffix == ".safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(files[name]))
        else:
            torch.save(state, files[name])
    return files


@pytest.mark.parametrize("name", ["mobilenetv3_large_100", "efficientvit_m2", "mobilenetv4_conv_small"])
def test_a_timm_imagenet_file_loads_into_the_frame_encoder_without_its_classifier(timm_files, name):
    file = timm_files[name]
    config = StudentConfig(backbone=name, pretrained=str(file), image_size=224)
    check_student(config, 32)  # what a recipe load runs: the file fits
    student = Student(config, max_words=32)
    saved = timm.models.load_state_dict(str(file))
    backbone = student.backbone.state_dict()
    assert all(torch.equal(backbone[key], saved[key]) for key in backbone)  # every weight, bit for bit
    classifier = timm.create_model(name, pretrained=False).pretrained_cfg["classifier"]
    dropped = sorted(set(saved) - set(backbone))
    assert dropped and all(key.startswith(f"{classifier}.") or key.startswith("head.") for key in dropped)
    assert not any(key.startswith("backbone." + classifier) for key in student.state_dict())
    assert len(student.pretrained_parameters()) == len(list(student.backbone.parameters()))


def test_a_timm_file_of_another_architecture_stops_the_recipe_naming_file_and_keys(timm_files):
    """timm itself loads a classifier-free backbone leniently (strict off): a file of another model with no
    shape clash would leave the backbone random after one log line. The recipe stops instead."""
    common = ["student.backbone_kwargs={}", "student.image_size=224"]
    mnv3 = timm_files["mobilenetv3_large_100"]
    with pytest.raises(RecipeError, match=rf"student.pretrained: {mnv3} does not fit efficientvit_m2: missing keys"):
        load_recipe(DEMO, [*common, "student.backbone=efficientvit_m2", f"student.pretrained={mnv3}"])
    mnv4 = timm_files["mobilenetv4_conv_small"]
    with pytest.raises(
        RecipeError, match=rf"(?s)student.pretrained: {mnv4} does not fit mobilenetv3_large_100.*conv_stem"
    ):
        load_recipe(DEMO, [*common, "student.backbone=mobilenetv3_large_100", f"student.pretrained={mnv4}"])


# open_clip: two tiny architectures registered as open_clip configs, one per layout open_clip saves. MobileCLIP's
# (a timm FastViT trunk, a bidirectional text tower in the custom-text layout) and OpenAI CLIP's (a ViT, a causal
# text tower whose weights sit on the CLIP model itself).
TINY = {
    "tiny-clip-test": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "tiny-mobileclip-test": {
        "embed_dim": 32,
        "vision_cfg": {"timm_model_name": "fastvit_t8", "timm_model_pretrained": False, "timm_pool": "avg",
                       "timm_proj": None, "image_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1,
                     "no_causal_mask": True},
        "custom_text": True,
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def open_clip_files(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Each tiny model built by open_clip.create_model (random weights) and its state dict saved as a file."""
    folder = tmp_path_factory.mktemp("open_clip")
    for name, config in TINY.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    found = {}
    for name in TINY:
        torch.manual_seed(0)
        model = open_clip.create_model(name).eval()
        torch.save(model.state_dict(), folder / f"{name}.pt")
        found[name] = model, folder / f"{name}.pt"
    return found


def open_clip_config(name: str, file: Path, **changes) -> StudentConfig:
    fields = dict(backbone=f"open_clip:{name}", pretrained=str(file), image_size=32, embed_dim=32, max_frames=4)
    return StudentConfig(**{**fields, "text": "open_clip", **changes})


@pytest.mark.parametrize("name", list(TINY))
def test_an_open_clip_model_gives_the_frame_encoder_and_the_text_tower(open_clip_files, name):
    model, file = open_clip_files[name]
    config = open_clip_config(name, file)
    check_student(config, 32)
    student = Student(config, max_words=32).eval()
    ids, mask = tokenize(CAPTIONS, 32)
    ids77, _ = tokenize(CAPTIONS, 77)  # open_clip's own context: a bidirectional tower sees the padding too
    frames = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        # The same modules on the same tensors: bit-equal.
        assert torch.equal(student.encode_text(ids, mask), F.normalize(model.encode_text(ids77), dim=-1))
        assert torch.equal(student.frame_proj(student.backbone(frames)), model.encode_image(frames))
        # Through frame_features the frames go channels-last, another convolution kernel: float32 rounding.
        video = student.frame_features(frames[None])[0]
        assert torch.allclose(video, model.encode_image(frames), atol=1e-5)
    assert student.logit_scale_log.item() == model.logit_scale.item()
    assert not student.renormalise  # no pretrained tag of these names: CLIP's normalisation
    trained = {id(p) for p in student.pretrained_parameters()}
    assert trained == {id(p) for p in [*student.backbone.parameters(), *student.text.parameters()]}


def test_an_open_clip_student_round_trips_through_its_export(open_clip_files, tmp_path):
    model, file = open_clip_files["tiny-mobileclip-test"]
    student = Student(open_clip_config("tiny-mobileclip-test", file), max_words=32).eval()
    loaded = load_student(export_student(student, tmp_path / "student.safetensors", dtype="fp32"))
    ids, mask = tokenize(CAPTIONS, 32)
    video, video_mask = torch.randn(2, 4, 3, 32, 32), torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(ids, mask), student.encode_text(ids, mask))
        assert torch.equal(loaded.encode_video(video, video_mask), student.encode_video(video, video_mask))


def test_open_clip_keys_that_do_not_fit_stop_naming_the_key(open_clip_files):
    _, vit_file = open_clip_files["tiny-clip-test"]
    with pytest.raises(ValueError, match=rf"student.pretrained: {vit_file} does not fit open_clip's tiny-mobileclip"):
        check_student(open_clip_config("tiny-mobileclip-test", vit_file), 32)
    with pytest.raises(ValueError, match="student.embed_dim: 64, .* in 32 dimensions; set student.embed_dim=32"):
        check_student(open_clip_config("tiny-clip-test", vit_file, embed_dim=64), 32)
    with pytest.raises(ValueError, match="student.text: open_clip takes the text tower of an open_clip:NAME backbone"):
        check_student(StudentConfig(backbone="mobilenetv4_conv_small", text="open_clip"), 32)
    with pytest.raises(ValueError, match="student.token_rank: an open_clip text tower keeps its own embedding"):
        check_student(open_clip_config("tiny-clip-test", vit_file, token_rank=8), 32)
    with pytest.raises(ValueError, match="no open_clip model 'MobileCLIP2-S9'; did you mean 'MobileCLIP2-S"):
        check_student(StudentConfig(backbone="open_clip:MobileCLIP2-S9"), 32)


def test_mobileclip_towers_get_frames_without_clips_normalisation():
    """MobileCLIP's towers were trained on [0, 1] pixels (open_clip's tags: mean 0, std 1); the clips arrive
    normalised with CLIP's mean and std, and the student maps them back before its frame encoder."""
    assert open_clip_normalisation("MobileCLIP2-S0") == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert open_clip_normalisation("ViT-B-32") == (CLIP_MEAN, CLIP_STD)
    student = Student(StudentConfig(backbone="open_clip:MobileCLIP2-S0", image_size=224, embed_dim=512), max_words=32)
    assert student.renormalise
    pixels = torch.rand(2, 3, 8, 8)
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    # float32: ((x - m) / s) * s + m is x up to rounding
    assert torch.allclose((pixels - mean) / std * student.input_scale + student.input_shift, pixels, atol=1e-6)
