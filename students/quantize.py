"""int8 ONNX encoders of a student, quantised from its fp32 ones (`python -m students.onnx STUDENT OUT --int8`).

Each encoder is quantised by what its weights are:
- transformer parts (the text tower, the temporal head, a ViT frame encoder): onnxruntime's dynamic int8,
  per-channel int8 weights, on the MatMuls that hold a weight and the token embedding's Gather; activations
  are quantised per batch at run time, so no calibration is needed;
- a convolutional frame encoder (ResNet, MobileNet, EfficientViT: most of the video encoder's weights in
  Conv): static QDQ, per-channel int8 weights, its activation ranges calibrated on real clips, since a dynamic
  Conv becomes ConvInteger, which onnxruntime's CPU provider cannot run. Activations are uint8 (int8 kernels)
  or, for a network whose outputs 8 bits move too far (`students.int8` tries 8 first), uint16 (the Convs then
  run in float on dequantised int8 weights: the size gain without the speed). The temporal head after it keeps
  dynamic int8 on its weight MatMuls: its activations are attention outputs whose range depends on the clip,
  which a fixed calibrated range fits worse than a per-batch one.
LayerNorm, Softmax, GELU, the residual Adds and the MatMuls of two activations (attention scores, attention
times values) stay float: quantising them is where CLIP-style towers are known to break.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_dynamic,
    quantize_static,
)

INT8_FORMAT = "clip4clip-distill/onnx-int8"
DYNAMIC_OPS = ("MatMul", "Gather")  # MatMul: the linear layers; Gather: the token embedding table
WEIGHT_TYPE = QuantType.QInt8  # signed int8 weights: onnxruntime's MatMulInteger takes them on x86 (u8 x s8)


def weights_by_op(model: onnx.ModelProto) -> dict[str, int]:
    """How many weight elements (initializers) each op type reads."""
    sizes = {init.name: int(np.prod(init.dims)) for init in model.graph.initializer}
    found: dict[str, int] = {}
    for node in model.graph.node:
        found[node.op_type] = found.get(node.op_type, 0) + sum(sizes.get(name, 0) for name in node.input)
    return found


def is_convolutional(model: onnx.ModelProto) -> bool:
    """Whether most of the matrix weights are Conv kernels (a CNN frame encoder), not MatMul or Gemm weights
    (a ViT's, whose only Conv is the patch embedding)."""
    found = weights_by_op(model)
    return found.get("Conv", 0) > found.get("MatMul", 0) + found.get("Gemm", 0)


def activation_matmuls(model: onnx.ModelProto) -> list[str]:
    """The MatMul nodes that hold no weight: attention's scores and its weighted values, kept float."""
    weights = {init.name for init in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and not weights & set(n.input)]


class FeedReader(CalibrationDataReader):
    """The calibration inputs of an encoder, one feed (a batch of real clips) at a time."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]):
        self.feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def quantize_weights(source: Path, target: Path) -> None:
    """Dynamic int8 of the weight MatMuls and the embedding Gathers of `source`, written to `target`."""
    model = onnx.load(str(source))
    quantize_dynamic(
        source,
        target,
        op_types_to_quantize=list(DYNAMIC_OPS),
        nodes_to_exclude=activation_matmuls(model),
        per_channel=True,
        weight_type=WEIGHT_TYPE,
    )
    strip_node_records(target)


def strip_node_records(path: Path) -> None:
    """Drops what the exporter records on each node (the PyTorch source it came from, for debugging), a third
    of a small encoder's file; nothing that runs reads it."""
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.ClearField("metadata_props")
        node.doc_string = ""
    onnx.save(model, str(path))


def quantize_convolutions(
    source: Path, target: Path, feeds: Iterable[dict[str, np.ndarray]], activations: QuantType
) -> None:
    """Static QDQ of the Convs of `source` (per-channel int8 weights, `activations` calibrated on `feeds`),
    then dynamic int8 of its weight MatMuls (the temporal head), written to `target`. BatchNorm is folded into
    the Convs first (onnxruntime's pre-processing), so the quantised kernels are the ones that run."""
    work = target.with_name(f"{target.stem}.work")
    work.mkdir(parents=True, exist_ok=True)
    try:
        whole, prepared, convs = work / "whole.onnx", work / "prepared.onnx", work / "convs.onnx"
        onnx.save(onnx.load(str(source)), str(whole))  # its weights inline: the pre-processing loses a .data file
        quant_pre_process(str(whole), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            prepared,
            convs,
            FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"],
            per_channel=True,
            activation_type=activations,
            weight_type=WEIGHT_TYPE,
            extra_options={"UseQDQContribOps": activations == QuantType.QUInt16},  # 16-bit Q/DQ before opset 21
        )
        quantize_weights(convs, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def quantize_folder(
    fp32: Path, out: Path, video_feeds: Iterable[dict[str, np.ndarray]], activations: QuantType = QuantType.QUInt8
) -> dict:
    """Writes int8 `video_encoder.onnx` and `text_encoder.onnx` of the fp32 folder `fp32` to `out`, with its
    `preprocessing.json` and a `model.json` recording the fp32 student's fingerprint and space, and how each
    encoder was quantised (`video_feeds`: calibration batches, and `activations` their type, read only for a
    convolutional video encoder). Returns that record."""
    out.mkdir(parents=True, exist_ok=True)
    methods = {}
    for name in ("video", "text"):
        source, target = fp32 / f"{name}_encoder.onnx", out / f"{name}_encoder.onnx"
        if name == "video" and is_convolutional(onnx.load(str(source))):
            quantize_convolutions(source, target, video_feeds, activations)
            bits = "8" if activations == QuantType.QUInt8 else "16"
            methods[name] = f"static QDQ int8 Conv with {bits}-bit activations (calibrated), dynamic int8 MatMul"
        else:
            quantize_weights(source, target)
            methods[name] = "dynamic int8 MatMul and Gather"
    shutil.copy(fp32 / "preprocessing.json", out / "preprocessing.json")
    record = json.loads((fp32 / "model.json").read_text())
    record["quantization"] = {
        "format": INT8_FORMAT,
        "methods": methods,
        "per_channel": True,
        "weight_type": WEIGHT_TYPE.name,
        "float": "LayerNorm, Softmax, GELU, residual Add, activation x activation MatMul",
    }
    (out / "model.json").write_text(json.dumps(record, indent=1))
    return record
