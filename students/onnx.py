"""Command line: `python -m students.onnx STUDENT OUT_DIR`: the student's two encoders as ONNX files.

    video_encoder.onnx  video [B, T, 3, H, W] (CLIP-normalised frames), video_mask [B, T] -> embeddings [B, D]
    text_encoder.onnx   input_ids [N, L], attention_mask [N, L] -> embeddings [N, D]
    preprocessing.json  how to sample, size and normalise frames and tokenise captions for them
    model.json          the student they come from, its fingerprint and embedding space (`distill.retrieval.encoders`),
                        so `distill.retrieval.index` and `distill.retrieval.search` run them with `--runtime onnx`
    int8/               with `--int8 --data LIST`: the same layout with int8 encoders, written only where they
                        pass the quality gates on LIST's clips (`students.int8`, docs/int8.md)

Embeddings are L2-normalised, as `encode_video` and `encode_text` return them; the batch axis is dynamic.
The backbone is reparameterised first where its timm family has train-time branches (RepVGG-style blocks).
The export checks itself: onnxruntime's outputs on random inputs against PyTorch's (needs
`pip install onnx onnxscript onnxruntime`).
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import asdict
from pathlib import Path

from distill.core.commands import command_parser, onnx_out

if __name__ == "__main__":  # --help, --version and bad arguments answered before torch loads
    onnx_out(parser := command_parser("export-onnx"), parser.parse_args())

import torch  # noqa: E402
from torch import nn  # noqa: E402

from distill.core.files import file_sha256  # noqa: E402
from students.export import export_file, load_student, read_metadata  # noqa: E402
from students.model import preprocessing_of  # noqa: E402

ONNX_FORMAT = "clip4clip-distill/onnx"


def student_record(path: Path, metadata: dict[str, str]) -> dict:
    """The fingerprint and embedding space of a student export (also what its ONNX folder records)."""
    sha256 = file_sha256(path)
    return {"sha256": sha256, "space": metadata.get("embedding_space", f"student:{sha256}")}


class VideoEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_video(video, video_mask)


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(input_ids, attention_mask)


def example_inputs(model: nn.Module, batch: int, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Random inputs of the encoders' shapes (`students.model.preprocessing_of`): frames, a mask with a
    shorter clip, token ids ending in CLIP's end token."""
    g = torch.Generator().manual_seed(seed)
    p = preprocessing_of(model)
    frames, size, words = p.max_frames, p.image_size, p.max_words
    mask = torch.ones(batch, frames, dtype=torch.long)
    mask[0, max(1, frames // 2) :] = 0
    ids = torch.randint(1, 49406, (batch, words), generator=g)
    ids[:, -1] = 49407  # CLIP's end token, where the text tower reads its embedding
    return {
        "video": {"video": torch.randn(batch, frames, 3, size, size, generator=g), "video_mask": mask},
        "text": {"input_ids": ids, "attention_mask": torch.ones(batch, words, dtype=torch.long)},
    }


def export_onnx(model: nn.Module, out: Path) -> dict[str, Path]:
    """Writes `video_encoder.onnx` and `text_encoder.onnx` (opset of torch's exporter) of a student, or of a
    two-tower teacher (for comparisons), to `out`."""
    from timm.utils.model import reparameterize_model

    model = reparameterize_model(copy.deepcopy(model).eval())
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.export.Dim("batch", min=1)
    inputs = example_inputs(model, 2)
    paths = {}
    for name, module in (("video", VideoEncoder(model).eval()), ("text", TextEncoder(model).eval())):
        path = paths[name] = out / f"{name}_encoder.onnx"
        torch.onnx.export(
            module,
            tuple(inputs[name].values()),
            str(path),
            input_names=list(inputs[name]),
            output_names=["embeddings"],
            dynamic_shapes={key: {0: batch} for key in inputs[name]},
            dynamo=True,
            verbose=False,
        )
    return paths


def describe_folder(out: Path, model: nn.Module, record: dict, preprocessing: str | None = None) -> None:
    """`preprocessing.json` (an export's record, else `preprocessing_of(model)`) and `model.json` (`record`:
    the fingerprint and space, `distill.retrieval.encoders`) beside the encoders: what `OnnxEncoder` reads."""
    (out / "preprocessing.json").write_text(preprocessing or json.dumps(asdict(preprocessing_of(model))))
    info = {"format": ONNX_FORMAT, **record, "embed_dim": model.embed_dim}
    (out / "model.json").write_text(json.dumps(info, indent=1))


def onnx_difference(model: nn.Module, paths: dict[str, Path], inputs: dict[str, dict[str, torch.Tensor]]) -> dict:
    """The largest absolute difference between onnxruntime's and PyTorch's embeddings, per encoder."""
    import onnxruntime

    reference = {"video": model.encode_video, "text": model.encode_text}
    found = {}
    for name, path in paths.items():
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs[name].items()})[0]
        with torch.no_grad():
            want = reference[name](*inputs[name].values()).numpy()
        found[name] = float(abs(got - want).max())
    return found


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("export-onnx")
    args = parser.parse_args(argv)
    out = onnx_out(parser, args)
    try:
        file = export_file(args.student)
        student = load_student(file)
        metadata = read_metadata(file)
    except (ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = export_onnx(student, out)
    record = {"student": str(args.student.resolve()), **student_record(file, metadata)}
    describe_folder(out, student, record, metadata.get("preprocessing"))
    difference = onnx_difference(student, paths, example_inputs(student, 3, seed=1))
    for name, path in paths.items():
        print(f"{path}: max abs difference to PyTorch {difference[name]:.2e} on random inputs")
    if args.int8:
        from students.int8 import GateError, write_int8  # onnxruntime's quantisation tools, only when asked

        try:
            figures = write_int8(out, out / "int8", args.data, args.val_fraction)
        except (GateError, ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1 if isinstance(error, GateError) else 2
        cosine = ", ".join(f"{k} {v['mean']:.4f} (p1 {v['p1']:.4f})" for k, v in figures["cosine"].items())
        print(f"{out / 'int8'}: int8 encoders pass the gates on {figures['pairs']} pairs; cosine to fp32 {cosine}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
