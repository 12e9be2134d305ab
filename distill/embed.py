"""Embed videos and captions with a retrieval model from Python, with the model's own sampling,
preprocessing and tokenising:

    student = load_student("runs/demo/student.safetensors")
    videos = embed_videos(student, ["a.mp4", "b.mp4"])
    scores = embed_texts(student, ["a small red circle moves left"]) @ videos.embeddings.T
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from distill.data.video import Backend, VideoError, read_clip
from distill.scorers import scorer_for
from students.model import Preprocessing, Student
from teachers.tokenizer import tokenize


def preprocessing_of(model: nn.Module) -> Preprocessing:
    """A loaded student's from its export (`load_student` attaches it); a student built here from its
    config; a teacher's from its input size and CLIP4Clip's evaluation defaults (12 frames at 1 fps,
    uniform slicing, 32 tokens)."""
    found = getattr(model, "preprocessing", None)
    if found is not None:
        return found
    if isinstance(model, Student):
        return Preprocessing(max_frames=model.config.max_frames, image_size=model.input_size, max_words=model.max_words)
    return Preprocessing(max_frames=12, image_size=model.input_size, max_words=min(32, model.context_length))


@dataclass
class VideoEmbeddings:
    paths: list[str]  # the videos that decoded, in the order given
    embeddings: torch.Tensor  # [len(paths), D], L2-normalised, float32 on the CPU
    failed: dict[str, str]  # video -> why it could not be read (never embedded)


class VideoFiles(Dataset):
    """Clips of video files as `model` reads them; a file that fails yields its error instead."""

    def __init__(self, paths: list[str], preprocessing: Preprocessing, backend: Backend):
        self.paths, self.p, self.backend = paths, preprocessing, backend

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        p = self.p
        try:
            video, mask = read_clip(
                self.paths[index],
                max_frames=p.max_frames,
                size=p.image_size,
                framerate=p.framerate,
                slice_framepos=p.slice_framepos,
                backend=self.backend,
            )
            return {"index": index, "video": video, "mask": mask, "error": ""}
        except VideoError as error:
            empty = torch.zeros(p.max_frames, 3, p.image_size, p.image_size)
            return {
                "index": index,
                "video": empty,
                "mask": torch.zeros(p.max_frames, dtype=torch.long),
                "error": str(error),
            }


def two_tower(model: nn.Module):
    scorer = scorer_for(model)
    if scorer.pairwise:
        raise ValueError(
            "a cross-encoder (tightTransf) model scores caption-video pairs together and has no "
            "embeddings to index or search; use a two-tower teacher or a student"
        )
    return scorer


@torch.no_grad()
def embed_videos(
    model: nn.Module,
    paths: list[str],
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    backend: Backend = "decord",
    progress: bool = False,
) -> VideoEmbeddings:
    """The videos' embeddings; `num_workers` DataLoader processes decode them. A missing or broken file is
    skipped and named in `failed`."""
    scorer, device = two_tower(model), next(model.parameters()).device
    loader = DataLoader(
        VideoFiles([str(p) for p in paths], preprocessing_of(model), backend),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    kept, rows, failed = [], [], {}
    for batch in tqdm(loader, desc="embed videos", unit="batch", disable=not progress):
        ok = torch.tensor([not error for error in batch["error"]])
        for index, error in zip(batch["index"].tolist(), batch["error"]):
            if error:
                failed[str(paths[index])] = error
        if ok.any():
            video, mask = batch["video"][ok].to(device), batch["mask"][ok].to(device)
            rows.append(scorer.videos(model.frame_features(video), mask)["video_features"].float().cpu())
            kept += [str(paths[i]) for i in batch["index"][ok].tolist()]
    dim = model.embed_dim
    return VideoEmbeddings(kept, torch.cat(rows) if rows else torch.empty(0, dim), failed)


@torch.no_grad()
def embed_texts(model: nn.Module, captions: list[str], *, batch_size: int = 256) -> torch.Tensor:
    """The captions' embeddings `[N, D]`, L2-normalised, float32 on the CPU."""
    scorer, device = two_tower(model), next(model.parameters()).device
    ids, mask = tokenize(captions, preprocessing_of(model).max_words)
    rows = [
        scorer.texts(ids[i : i + batch_size].to(device), mask[i : i + batch_size].to(device))["text_features"]
        for i in range(0, len(captions), batch_size)
    ]
    return torch.cat(rows).float().cpu()
