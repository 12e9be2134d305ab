"""The student's encoders as ONNX files (`python -m students.onnx`): onnxruntime gives PyTorch's embeddings
within 1e-4 (max abs; float32 kernels of two runtimes sum in other orders) on random inputs at batch sizes
other than the export's, and on real clips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny import student_config

from distill.core.schema import SyntheticConfig
from distill.data.formats import read_jsonl
from distill.data.synthetic import generate_synthetic
from distill.data.video import read_clip
from students import Student, export_student, load_student
from students.onnx import example_inputs, main, onnx_difference
from teachers import tokenize

pytestmark = pytest.mark.usefixtures("one_thread")

# (timm model, kwargs): a ViT, a MobileNetV3 (BatchNorm, depthwise convolutions), an EfficientViT-M,
# whose BatchNorm'd convolutions and linears timm's reparameterisation fuses before the export, and the
# narrowed ResNet-10-T of bench_kd's `rn10t` sizes (plain convolutions; its channels a list, as YAML gives it),
# and the full-size recipes' MobileNetV4-conv-small (universal inverted bottlenecks)
BACKBONES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}),
    "mobilenet": ("mobilenetv3_small_050", {}),
    "effvit": ("efficientvit_m0", {"img_size": 32, "embed_dim": [16, 32, 48], "num_heads": [2, 2, 2]}),
    "resnet": ("resnet10t", {"channels": [16, 32, 64, 128], "stem_width": 8}),
    "mobilenetv4": ("mobilenetv4_conv_small", {}),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = generate_synthetic(
        tmp_path_factory.mktemp("onnx") / "data",
        SyntheticConfig(num_train=3, num_test=1, size=32, fps=4, seconds=3, seed=2),
    )
    return read_jsonl(root / "train.jsonl", root, root).pairs


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_onnx_encoders_equal_pytorch(backbone, clips, tmp_path, capsys):
    name, kwargs = BACKBONES[backbone]
    torch.manual_seed(0)
    config = student_config(backbone=name, backbone_kwargs=kwargs, image_size=32)
    preprocessing = {"max_frames": 3, "image_size": 32, "max_words": 16, "framerate": 1, "slice_framepos": 2}
    path = export_student(
        Student(config, max_words=16).eval(),
        tmp_path / "student.safetensors",
        {"preprocessing": json.dumps(preprocessing)},
    )
    out = tmp_path / "onnx"
    assert main([str(path), str(out)]) == 0
    assert "max abs difference to PyTorch" in capsys.readouterr().out
    assert json.loads((out / "preprocessing.json").read_text()) == preprocessing
    student = load_student(path)
    paths = {"video": out / "video_encoder.onnx", "text": out / "text_encoder.onnx"}
    for batch in (1, 5):  # the export traced a batch of 2
        assert max(onnx_difference(student, paths, example_inputs(student, batch, seed=batch)).values()) < 1e-4
    clip = [read_clip(pair.video, max_frames=3, size=32) for pair in clips]
    ids, attention = tokenize([pair.caption for pair in clips], 16)
    real = {
        "video": {"video": torch.stack([c[0] for c in clip]), "video_mask": torch.stack([c[1] for c in clip])},
        "text": {"input_ids": ids, "attention_mask": attention},
    }
    assert max(onnx_difference(student, paths, real).values()) < 1e-4


def test_not_a_student_is_named(tmp_path, capsys):
    (tmp_path / "x.safetensors").write_bytes(b"nope")
    assert main([str(tmp_path / "x.safetensors"), str(tmp_path / "out")]) == 2
    assert f"{tmp_path / 'x.safetensors'}: not a safetensors file" in capsys.readouterr().err


def test_index_and_search_run_on_onnxruntime_in_the_students_space(clips, tmp_path, capsys):
    """`--runtime onnx`: the index equals PyTorch's within float16 storage (the two runtimes differ by
    under 1e-4 before it); it is the same student's index, so each runtime extends and queries the other's."""
    from distill.retrieval.index import main as index_main
    from distill.retrieval.index import read_index
    from distill.retrieval.search import main as search_main

    torch.manual_seed(0)
    preprocessing = {"max_frames": 3, "image_size": 16, "max_words": 16, "framerate": 1, "slice_framepos": 2}
    path = export_student(
        Student(student_config(), max_words=16).eval(),
        tmp_path / "student.safetensors",
        {"preprocessing": json.dumps(preprocessing)},
    )
    assert main([str(path), str(tmp_path / "onnx")]) == 0
    record = json.loads((tmp_path / "onnx" / "model.json").read_text())
    assert record["student"] == str(path.resolve()) and record["space"] == f"student:{record['sha256']}"
    videos = Path(clips[0].video).parent
    for runtime, model in (("torch", path), ("onnx", tmp_path / "onnx")):
        assert (
            index_main([str(model), str(videos), "--out", str(tmp_path / f"by_{runtime}"), "--runtime", runtime]) == 0
        )
    (_, entries, by_torch), (_, onnx_entries, by_onnx) = (read_index(tmp_path / f"by_{r}") for r in ("torch", "onnx"))
    assert entries == onnx_entries and len(entries) == 4  # 3 train clips and a test clip
    torch.testing.assert_close(by_onnx.float(), by_torch.float(), rtol=0, atol=1e-3)

    command = [str(tmp_path / "onnx"), "--runtime", "onnx", "--out", str(tmp_path / "by_torch")]
    assert index_main([command[0], str(videos), *command[1:]]) == 0
    assert "0 videos embedded, 0 resumed, 4 kept" in capsys.readouterr().out
    found = {}
    for runtime, model in (("torch", path), ("onnx", tmp_path / "onnx")):
        query = [str(tmp_path / "by_torch"), clips[1].caption, "--model", str(model), "--runtime", runtime, "--json"]
        assert search_main(query) == 0
        found[runtime] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [h["path"] for h in found["onnx"]] == [h["path"] for h in found["torch"]]
