"""int8 ONNX encoders (`python -m students.onnx STUDENT OUT --int8`): dynamic int8 for a ViT student, static
QDQ calibrated on real clips for a CNN one; each passes the quality gates against its fp32 encoders on real
clips, or writes nothing and names the gate with its figure; index and search take the int8 folder, in the
fp32 student's space."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from tiny import student_config

from distill.core.schema import SyntheticConfig
from distill.data.synthetic import generate_synthetic
from students import Student, export_student
from students.int8 import GateError, Gates, write_int8
from students.onnx import main
from students.quantize import is_convolutional

pytestmark = pytest.mark.usefixtures("one_thread")

PREPROCESSING = {"max_frames": 3, "image_size": 32, "max_words": 16, "framerate": 1, "slice_framepos": 2}
BACKBONES = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}),
    "mobilenet": ("mobilenetv3_small_050", {}),  # BatchNorm, depthwise convolutions, squeeze-excitation
}
# R@K on 24 pairs moves in steps of one pair, 4.2 points, and a random student's scores sit close together, so
# an int8 rounding may swap two neighbours: these gates allow one pair each and keep the cosine gates as they
# are (a real validation split has hundreds of pairs, a trained student wider gaps).
ONE_PAIR = 100 / 24 + 1e-9
GATES = Gates(r1_points=ONE_PAIR, r5_points=ONE_PAIR, r10_points=ONE_PAIR)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """24 real clips and their captions, listed as distill.index lists videos."""
    root = generate_synthetic(
        tmp_path_factory.mktemp("int8") / "data",
        SyntheticConfig(num_train=24, num_test=1, size=32, fps=4, seconds=3, seed=3),
    )
    return root / "train.jsonl"


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """A random student of each family, exported with its fp32 ONNX encoders."""
    found = {}
    for family, (name, kwargs) in BACKBONES.items():
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(family)
        config = student_config(backbone=name, backbone_kwargs=kwargs, image_size=32)
        path = export_student(
            Student(config, max_words=16).eval(),
            folder / "student.safetensors",
            {"preprocessing": json.dumps(PREPROCESSING)},
        )
        assert main([str(path), str(folder / "onnx")]) == 0
        found[family] = path
    return found


def onnx_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*_encoder.onnx*"))


@pytest.mark.parametrize("family", list(BACKBONES))
def test_int8_encoders_pass_the_gates(family, exports, data, tmp_path):
    """The gates (cosine to fp32 per encoder, R@K of int8 and of int8 queries on an fp32 gallery) hold on
    real clips; dynamic quantisation depends on each batch's values, so the figures are compared with
    tolerances, never bit for bit."""
    fp32, out = exports[family].parent / "onnx", tmp_path / "int8"
    figures = write_int8(fp32, out, data, gates=GATES)
    record = json.loads((out / "model.json").read_text())
    assert {k: record[k] for k in ("sha256", "space")} == {
        k: json.loads((fp32 / "model.json").read_text())[k] for k in ("sha256", "space")
    }
    assert json.loads((out / "preprocessing.json").read_text()) == PREPROCESSING
    methods = record["quantization"]["methods"]
    assert methods["text"] == "dynamic int8 MatMul and Gather"
    video = onnx.load(str(out / "video_encoder.onnx"))
    ops = {node.op_type for node in video.graph.node}
    if family == "vit":
        assert not is_convolutional(onnx.load(str(fp32 / "video_encoder.onnx")))
        assert "MatMulInteger" in ops and "QuantizeLinear" not in ops
    else:  # the Convs static QDQ (no ConvInteger, which the CPU cannot run), the temporal head dynamic
        assert methods["video"].startswith("static QDQ int8 Conv")
        assert {"QuantizeLinear", "DequantizeLinear", "MatMulInteger"} <= ops and "ConvInteger" not in ops
    assert {"LayerNormalization", "Softmax"} <= ops  # left float, not folded into quantised ops
    assert record["gates"]["pairs"] == figures["pairs"] == 24
    for name in ("video", "text"):  # the default cosine gates
        assert figures["cosine"][name]["mean"] >= 0.99 and figures["cosine"][name]["p1"] >= 0.97
    for side in ("int8", "int8 queries, fp32 gallery"):
        for direction in ("t2v", "v2t"):
            assert figures["recall"]["fp32"][direction]["R1"] - figures["recall"][side][direction]["R1"] <= ONE_PAIR
    assert onnx_bytes(out) <= 0.35 * onnx_bytes(fp32)


def test_a_failing_gate_writes_nothing_and_is_named_with_its_figure(exports, data, tmp_path, monkeypatch, capsys):
    fp32 = exports["vit"].parent / "onnx"
    out = tmp_path / "int8"
    with pytest.raises(GateError, match=r"video encoder cosine mean 0\.99\d+ < 1\.01.*text encoder cosine mean"):
        write_int8(fp32, out, data, gates=Gates(cosine_mean=1.01))  # a mean cosine cannot exceed 1
    assert not list(tmp_path.iterdir())
    # through the command: exit status 1, the gate and its figure on stderr, no int8 folder
    monkeypatch.setattr("students.int8.GATES", Gates(r1_points=-101.0))  # R@1 would have to rise 101 points
    cli = tmp_path / "cli"
    assert main([str(exports["vit"]), str(cli), "--int8", "--data", str(data), "--val-fraction", "0.3"]) == 1
    error = capsys.readouterr().err
    assert "fail 4 gate(s): int8 t2v R1" in error and "points lower, at most -101.0" in error
    assert (cli / "video_encoder.onnx").is_file() and not (cli / "int8").exists()
    assert not (cli / "int8.partial").exists()


def test_int8_needs_clips_and_names_a_bad_list(exports, data, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([str(exports["vit"]), str(tmp_path / "a"), "--int8"])
    assert "--int8 needs --data LIST" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("nope")
    fp32 = exports["vit"].parent / "onnx"
    with pytest.raises(ValueError, match="list.txt: expected a .jsonl or .csv file of 'video' and 'caption' fields"):
        write_int8(fp32, tmp_path / "int8", tmp_path / "list.txt")
    with pytest.raises(ValueError, match="val_fraction 0.001 leaves 24 calibration and 0 validation pairs"):
        write_int8(fp32, tmp_path / "int8", data, val_fraction=0.001)
    assert not (tmp_path / "int8").exists()


def test_index_and_search_on_int8_share_the_fp32_space(exports, data, tmp_path, capsys):
    """An index built by the int8 encoders holds the fp32 index's rows within int8 error (cosine >= 0.99,
    the gate); an fp32 index is searched with int8 queries, an int8 index extended by fp32."""
    from distill.retrieval.index import main as index_main
    from distill.retrieval.index import read_index
    from distill.retrieval.search import main as search_main

    fp32 = exports["vit"].parent / "onnx"
    write_int8(fp32, fp32 / "int8", data, gates=GATES)
    videos = data.parent / "videos"
    for name, model in (("fp32", fp32), ("int8", fp32 / "int8")):
        assert index_main([str(model), str(videos), "--out", str(tmp_path / name), "--runtime", "onnx"]) == 0
    (_, entries, by_fp32), (info, int8_entries, by_int8) = (read_index(tmp_path / n) for n in ("fp32", "int8"))
    assert entries == int8_entries and len(entries) == 25 and info["model"]["space"].startswith("student:")
    assert torch.nn.functional.cosine_similarity(by_fp32.float(), by_int8.float()).min() >= 0.99
    capsys.readouterr()
    command = [str(fp32), str(videos), "--out", str(tmp_path / "int8"), "--runtime", "onnx"]
    assert index_main(command) == 0 and "0 videos embedded, 0 resumed, 25 kept" in capsys.readouterr().out
    caption = json.loads(data.read_text().splitlines()[0])["caption"]
    found = {}
    for name, model in (("fp32", fp32), ("int8", fp32 / "int8")):
        query = [str(tmp_path / "fp32"), caption, "--model", str(model), "--runtime", "onnx", "--json", "--top", "25"]
        assert search_main(query) == 0
        found[name] = {hit["path"]: hit["score"] for hit in map(json.loads, capsys.readouterr().out.splitlines())}
    assert found["int8"].keys() == found["fp32"].keys()
    # scores: a caption's int8 embedding within the gate's cosine of its fp32 one, against the same gallery
    assert max(abs(found["int8"][p] - found["fp32"][p]) for p in found["fp32"]) < 0.02
