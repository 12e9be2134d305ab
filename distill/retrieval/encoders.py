"""What embeds a gallery and its queries: a PyTorch retrieval model (a student or a two-tower teacher) or a
student's ONNX encoders on onnxruntime, each with the record an index keeps of it.

A record names the model (`source`, `kind`, `runtime`), fingerprints it (`sha256`: the student export's
file, or the teacher's weights) and names its embedding space (`space`). Two models share a space when
their embeddings may be compared: a model with itself (in either runtime), and a student trained with
`student.text=teacher` with its teacher, whose text tower it ships (the export records the teacher's
fingerprint as `embedding_space`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from distill.core.scorers import scorer_for
from students.model import Preprocessing, preprocessing_of
from students.onnx import ONNX_FORMAT, student_record

RUNTIMES = ("torch", "onnx")


class TorchEncoder:
    """A two-tower retrieval model's embeddings, L2-normalised float32 on the CPU, from CPU inputs."""

    def __init__(self, model: nn.Module):
        self.scorer = scorer_for(model)
        if self.scorer.pairwise:
            raise ValueError(
                "a cross-encoder (tightTransf) model scores caption-video pairs together and has no "
                "embeddings to index or search; use a two-tower teacher or a student"
            )
        self.model, self.device = model, next(model.parameters()).device
        self.preprocessing, self.embed_dim = preprocessing_of(model), model.embed_dim

    @torch.no_grad()
    def videos(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        video, mask = video.to(self.device), mask.to(self.device)
        return self.scorer.videos(self.model.frame_features(video), mask)["video_features"].float().cpu()

    @torch.no_grad()
    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        ids, mask = input_ids.to(self.device), attention_mask.to(self.device)
        return self.scorer.texts(ids, mask)["text_features"].float().cpu()


class OnnxEncoder:
    """A student's encoders as `python -m students.onnx` writes them, run by onnxruntime on the CPU."""

    def __init__(self, folder: Path):
        import onnxruntime

        info = read_onnx_folder(folder)
        self.embed_dim = info["embed_dim"]
        self.preprocessing = Preprocessing.read(json.loads((folder / "preprocessing.json").read_text()))
        options = onnxruntime.SessionOptions()
        self.sessions = {
            name: onnxruntime.InferenceSession(
                str(folder / f"{name}_encoder.onnx"), options, providers=["CPUExecutionProvider"]
            )
            for name in ("video", "text")
        }

    def videos(self, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        got = self.sessions["video"].run(None, {"video": video.numpy(), "video_mask": mask.numpy()})[0]
        return torch.from_numpy(got)

    def texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        return torch.from_numpy(self.sessions["text"].run(None, feeds)[0])


Encoder = TorchEncoder | OnnxEncoder


def encoder_of(model: nn.Module | Encoder) -> Encoder:
    return TorchEncoder(model) if isinstance(model, nn.Module) else model


def read_onnx_folder(folder: Path) -> dict:
    """The `model.json` of a folder `python -m students.onnx` wrote: the student it holds and its space."""
    path = folder / "model.json"
    if not path.is_file():
        raise ValueError(
            f"{folder}: not a folder of ONNX encoders (no model.json); write one with "
            "python -m students.onnx STUDENT FOLDER"
        )
    info = json.loads(path.read_text())
    if info.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path}: not a {ONNX_FORMAT} record")
    return info


def teacher_preprocessing(model: nn.Module, source: str) -> Preprocessing:
    """How a teacher reads clips: as the recipe that trained it says (`save_teacher` records it), else as
    CLIP4Clip evaluates (`preprocessing_of`)."""
    from teachers.export import training_recipe

    recipe = training_recipe(source)
    if recipe is None:
        return preprocessing_of(model)
    data = recipe["data"]
    return Preprocessing(
        max_frames=recipe["teacher"]["max_frames"],
        image_size=model.input_size,
        max_words=data["max_words"],
        framerate=data["framerate"],
        slice_framepos=data["slice_framepos"],
    )


def load_encoder(source: str, runtime: str = "torch", device: str | torch.device = "cpu") -> tuple[Encoder, dict]:
    """The encoder of `source` and its record: with `runtime="torch"`, a student export (file or model card
    folder) or else any `teachers.load_teacher` source; with `"onnx"`, a folder of a student's ONNX encoders.

    Raises:
        FileNotFoundError: nothing at `source`.
        ValueError: a damaged student, a folder that holds no ONNX encoders, an unknown runtime.
    """
    from students import export_file, load_student, read_metadata
    from teachers import load_teacher, parse_open_clip_source
    from teachers.export import teacher_sha256

    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: expected one of {', '.join(RUNTIMES)}")
    file = Path(parse_open_clip_source(source)[1] if source.startswith("open_clip:") else source)
    if not file.exists():
        raise FileNotFoundError(f"model {source}: no such file or folder")
    where = source if source.startswith("open_clip:") else str(file.resolve())
    if runtime == "onnx":
        info = read_onnx_folder(file)
        encoder = OnnxEncoder(file)
        record = {"kind": "student", "sha256": info["sha256"], "space": info["space"]}
    else:
        export = export_file(file)
        try:
            metadata = read_metadata(export)
        except ValueError:  # not a student export: a teacher source (a damaged student says so below)
            model = load_teacher(source).to(device)
            model.preprocessing = teacher_preprocessing(model, source)
            sha256 = teacher_sha256(model)
            record = {"kind": "teacher", "sha256": sha256, "space": f"teacher:{sha256}"}
        else:
            model = load_student(export, device)
            record = {"kind": "student", **student_record(export, metadata)}
        encoder = TorchEncoder(model)
    return encoder, {"source": where, "runtime": runtime, **record, "embed_dim": encoder.embed_dim}
