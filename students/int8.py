"""A student's int8 encoder folder, written only where it keeps the fp32 encoders' quality on real clips.

`write_int8` quantises the fp32 folder of `python -m students.onnx` (`students.quantize`), calibrating a
convolutional frame encoder on the calibration clips, then embeds the validation clips and their captions
with both folders and measures, for each encoder, the cosine of its int8 embeddings to its fp32 ones, and
text-to-video and video-to-text R@1/5/10 of int8 (both sides) and of int8 queries against an fp32 gallery
(a user who upgrades one side first) against fp32's. Every gate in `GATES` must hold, or no file is written.
A convolutional video encoder whose 8-bit activations fail a gate is quantised again with 16-bit ones
(`students.quantize`), and the folder records what failed first.

The clips come from a `.jsonl` or `.csv` list of `video` and `caption` (paths relative to the list's folder,
as `distill.index` lists them, e.g. a synthetic dataset's `train.jsonl`); with `val_fraction`, the list's
held-out share as `data.val_fraction` holds it out (`distill.data.splits`) is the validation split and the
rest calibrates, else the whole list does both. A video's first caption is its query.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from onnxruntime.quantization import QuantType

from distill.core.files import atomic_dir
from distill.data.formats import Pair, read_csv, read_jsonl
from distill.data.splits import hold_out
from distill.data.video import VideoError, read_clip
from distill.evaluation.metrics import retrieval_metrics
from students.model import Preprocessing
from students.quantize import quantize_folder
from teachers.tokenizer import tokenize

CALIBRATION_CLIPS = 64  # a few hundred frames for the activation ranges of a convolutional frame encoder
BATCH = 16  # clips a batch, as `distill.index` embeds them: dynamic int8 ranges depend on the batch


@dataclass(frozen=True)
class Gates:
    """The least an int8 folder must keep of its fp32 encoders, on the validation split."""

    cosine_mean: float = 0.99  # mean cosine of an encoder's int8 embeddings to its fp32 ones
    cosine_p1: float = 0.97  # their 1st percentile: no clip or caption far off
    r1_points: float = 1.0  # largest R@1 drop (percentage points), t2v and v2t
    r5_points: float = 0.5  # largest R@5 drop
    r10_points: float = 0.5  # largest R@10 drop


GATES = Gates()


class GateError(ValueError):
    """An int8 encoder folder that fails a gate: the message names it and its figure."""


def read_pairs(path: Path) -> list[Pair]:
    """The pairs of a `.jsonl` or `.csv` list of `video` and `caption`, paths relative to its folder."""
    readers = {".jsonl": read_jsonl, ".csv": read_csv}
    if path.suffix not in readers or not path.is_file():
        raise ValueError(f"{path}: expected a .jsonl or .csv file of 'video' and 'caption' fields")
    found = readers[path.suffix](path, path.parent, path.parent)
    if problems := [p for p in found.problems if p.fatal]:
        raise ValueError(f"{path}: {problems[0]}")
    if not found.pairs:
        raise ValueError(f"{path}: lists no video and caption")
    return found.pairs


def split_pairs(pairs: Sequence[Pair], val_fraction: float | None) -> tuple[list[Pair], list[Pair]]:
    """(calibration pairs, validation pairs, one a video): with `val_fraction`, the rest and the held-out share
    (refused if either is empty), else all of them both times."""
    calibration, validation = hold_out(pairs, val_fraction) if val_fraction else (list(pairs), list(pairs))
    if not calibration or not validation:
        raise ValueError(
            f"val_fraction {val_fraction} leaves {len(calibration)} calibration and {len(validation)} validation "
            "pairs; use a longer list or another fraction"
        )
    first = {}
    for pair in validation:
        first.setdefault(pair.video, pair)
    return calibration, list(first.values())


def clip_batches(pairs: Sequence[Pair], p: Preprocessing) -> Iterator[dict[str, np.ndarray]]:
    """The video encoder's inputs for the pairs' clips, BATCH at a time, read as the student reads them."""
    for start in range(0, len(pairs), BATCH):
        try:
            clips = [
                read_clip(
                    pair.video,
                    max_frames=p.max_frames,
                    size=p.image_size,
                    framerate=p.framerate,
                    slice_framepos=p.slice_framepos,
                )
                for pair in pairs[start : start + BATCH]
            ]
        except VideoError as error:
            raise ValueError(f"a clip to calibrate or gate on: {error}") from error
        yield {
            "video": torch.stack([c[0] for c in clips]).numpy(),
            "video_mask": torch.stack([c[1] for c in clips]).numpy(),
        }


def sessions(folder: Path) -> dict[str, onnxruntime.InferenceSession]:
    return {
        name: onnxruntime.InferenceSession(str(folder / f"{name}_encoder.onnx"), providers=["CPUExecutionProvider"])
        for name in ("video", "text")
    }


def embed(folders: dict[str, Path], pairs: Sequence[Pair], p: Preprocessing) -> dict[str, dict[str, torch.Tensor]]:
    """`{precision: {"video": [N, D], "text": [N, D]}}` of each folder, on the same batches of the pairs."""
    runs = {precision: sessions(folder) for precision, folder in folders.items()}
    found = {precision: {"video": [], "text": []} for precision in folders}
    for feeds in clip_batches(pairs, p):
        for precision, run in runs.items():
            found[precision]["video"].append(torch.from_numpy(run["video"].run(None, feeds)[0]))
    ids, mask = tokenize([pair.caption for pair in pairs], p.max_words)
    for start in range(0, len(pairs), BATCH):
        feeds = {"input_ids": ids[start : start + BATCH].numpy(), "attention_mask": mask[start : start + BATCH].numpy()}
        for precision, run in runs.items():
            found[precision]["text"].append(torch.from_numpy(run["text"].run(None, feeds)[0]))
    return {precision: {k: torch.cat(v) for k, v in rows.items()} for precision, rows in found.items()}


def measure(fp32: dict[str, torch.Tensor], int8: dict[str, torch.Tensor]) -> dict:
    """Each encoder's cosine of int8 to fp32 (mean, 1st percentile) and the R@K of fp32, of int8, and of int8
    queries against an fp32 gallery, t2v and v2t, from `{"video": [N, D], "text": [N, D]}` embeddings of N
    captions and their videos (L2-normalised)."""
    cosine = {}
    for name in ("video", "text"):
        cos = (fp32[name] * int8[name]).sum(-1).double()
        cosine[name] = {"mean": cos.mean().item(), "p1": torch.quantile(cos, 0.01).item()}
    scores = {
        "fp32": (fp32["text"] @ fp32["video"].T, fp32["video"] @ fp32["text"].T),
        "int8": (int8["text"] @ int8["video"].T, int8["video"] @ int8["text"].T),
        "int8 queries, fp32 gallery": (int8["text"] @ fp32["video"].T, int8["video"] @ fp32["text"].T),
    }
    recall = {
        side: {"t2v": retrieval_metrics(t2v), "v2t": retrieval_metrics(v2t)} for side, (t2v, v2t) in scores.items()
    }
    return {"pairs": len(fp32["text"]), "cosine": cosine, "recall": recall}


def failures(figures: dict, gates: Gates = GATES) -> list[str]:
    """The gates `figures` (`measure`) fail, each with its figure and its bound."""
    failed = []
    for name, cosine in figures["cosine"].items():
        for key, bound in (("mean", gates.cosine_mean), ("p1", gates.cosine_p1)):
            if cosine[key] < bound:
                failed.append(f"{name} encoder cosine {key} {cosine[key]:.4f} < {bound}")
    fp32 = figures["recall"]["fp32"]
    for side in ("int8", "int8 queries, fp32 gallery"):
        for direction, got in figures["recall"][side].items():
            for k, most in (("R1", gates.r1_points), ("R5", gates.r5_points), ("R10", gates.r10_points)):
                drop = fp32[direction][k] - got[k]
                if drop > most:
                    failed.append(
                        f"{side} {direction} {k} {got[k]:.1f} vs fp32 {fp32[direction][k]:.1f}: "
                        f"{drop:.1f} points lower, at most {most}"
                    )
    return failed


def write_int8(
    fp32: Path, out: Path, data: Path, val_fraction: float | None = None, gates: Gates | None = None
) -> dict:
    """Writes the int8 folder of the fp32 folder `fp32` to `out` if it passes `gates` (`GATES` unless given)
    on the clips of `data` (see the module docstring) and returns the figures, also in its `model.json`.

    Raises:
        GateError: a gate failed (the message names each failure with its figure); nothing is written.
        ValueError: `data` is not a list of clips, a clip cannot be read, or `val_fraction` leaves a split empty.
    """
    gates = gates or GATES
    calibration, validation = split_pairs(read_pairs(data), val_fraction)
    p = Preprocessing.read(json.loads((fp32 / "preprocessing.json").read_text()))
    with atomic_dir(out) as partial:
        tried, reference = {}, None
        for activations in (QuantType.QUInt8, QuantType.QUInt16):  # 16 only for a convolutional video encoder
            record = quantize_folder(fp32, partial, clip_batches(calibration[:CALIBRATION_CLIPS], p), activations)
            # fp32's embeddings once: a retry embeds (and decodes) the validation clips for its int8 folder alone
            found = embed({"int8": partial} if reference else {"fp32": fp32, "int8": partial}, validation, p)
            reference = reference or found["fp32"]
            figures = measure(reference, found["int8"])
            failed = failures(figures, gates)
            if not failed or "static" not in record["quantization"]["methods"]["video"]:
                break
            tried[record["quantization"]["methods"]["video"]] = failed
        if failed:
            raise GateError(f"int8 encoders of {fp32} fail {len(failed)} gate(s): " + "; ".join(failed))
        record["quantization"]["failed first"] = tried
        record["gates"] = {"bounds": dataclasses.asdict(gates), "data": str(data), **figures}
        (partial / "model.json").write_text(json.dumps(record, indent=1))
    return figures
