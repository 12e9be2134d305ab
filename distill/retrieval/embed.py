"""Embed videos and captions with a retrieval model from Python, with the model's own sampling,
preprocessing and tokenising:

    student = load_student("runs/demo/student.safetensors")
    videos = embed_videos(student, ["a.mp4", "b.mp4"])
    scores = embed_texts(student, ["a small red circle moves left"]) @ videos.embeddings.T

`model` is a PyTorch retrieval model or an `distill.retrieval.encoders` encoder (e.g. a student's ONNX encoders).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from distill.data.video import DEFAULT_BACKEND, Backend, VideoError, load_segments, normalize, pad_clip
from distill.retrieval.encoders import Encoder, encoder_of
from students.model import Preprocessing
from teachers.tokenizer import tokenize


@dataclass
class VideoEmbeddings:
    paths: list[str]  # the video of each embedding, in the order given (a path a segment, with `segment`)
    spans: list[tuple[float, float]]  # (start, end) in seconds of the video each embedding covers
    durations: list[float]  # the duration of each embedding's video, in seconds
    embeddings: torch.Tensor  # [len(paths), D], L2-normalised, float32 on the CPU
    failed: dict[str, str]  # video -> why it could not be read (never embedded)


class VideoFiles(Dataset):
    """Each video file read as a model reads it, whole or cut into `segment`-second segments, as resized
    uint8 frames (a quarter of the float32 clips' memory: a long video has many segments); a file that fails
    yields its error instead."""

    def __init__(self, paths: list[str], preprocessing: Preprocessing, backend: Backend, segment: int | None):
        self.paths, self.p, self.backend, self.segment = paths, preprocessing, backend, segment

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        p = self.p
        try:
            spans, frames, duration = load_segments(
                self.paths[index],
                self.segment,
                max_frames=p.max_frames,
                size=p.image_size,
                framerate=p.framerate,
                slice_framepos=p.slice_framepos,
                backend=self.backend,
            )
            return {"index": index, "spans": spans, "frames": frames, "duration": duration, "error": ""}
        except VideoError as error:
            return {"index": index, "error": str(error)}


def as_list(items: list[dict]) -> list[dict]:
    """The collate function of `VideoFiles`: files hold different numbers of segments."""
    return items


@torch.no_grad()
def embed_videos(
    model: nn.Module | Encoder,
    paths: list[str],
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    segment: int | None = None,
    backend: Backend = DEFAULT_BACKEND,
    progress: bool = False,
) -> VideoEmbeddings:
    """The videos' embeddings, a video each, or a `segment`-second segment each; `num_workers` DataLoader
    processes decode them, `batch_size` files at a time (the model sees `batch_size` clips at a time). A
    missing or broken file is skipped and named in `failed`."""
    encoder = encoder_of(model)
    loader = DataLoader(
        VideoFiles([str(p) for p in paths], encoder.preprocessing, backend, segment),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=as_list,
    )
    found = VideoEmbeddings([], [], [], torch.empty(0, encoder.embed_dim), {})
    rows = []
    for batch in tqdm(loader, desc="embed videos", unit="batch", disable=not progress):
        read = [item for item in batch if not item["error"]]
        found.failed |= {str(paths[item["index"]]): item["error"] for item in batch if item["error"]}
        segments = [frames for item in read for frames in item["frames"]]
        for i in range(0, len(segments), batch_size):  # a long video's segments, batch_size at a time
            clips = [
                pad_clip(normalize(frames), encoder.preprocessing.max_frames) for frames in segments[i : i + batch_size]
            ]
            rows.append(encoder.videos(torch.stack([c[0] for c in clips]), torch.stack([c[1] for c in clips])))
        for item in read:
            found.paths += [str(paths[item["index"]])] * len(item["spans"])
            found.spans += item["spans"]
            found.durations += [item["duration"]] * len(item["spans"])
    if rows:
        found.embeddings = torch.cat(rows)
    return found


@torch.no_grad()
def embed_texts(model: nn.Module | Encoder, captions: list[str], *, batch_size: int = 256) -> torch.Tensor:
    """The captions' embeddings `[N, D]`, L2-normalised, float32 on the CPU."""
    encoder = encoder_of(model)
    ids, mask = tokenize(captions, encoder.preprocessing.max_words)
    rows = [
        encoder.texts(ids[i : i + batch_size], mask[i : i + batch_size]) for i in range(0, len(captions), batch_size)
    ]
    return torch.cat(rows)
