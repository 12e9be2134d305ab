"""The teacher cache: the frozen teacher's outputs for every training pair, computed once.

Layout of `output_dir/teacher_cache/`:
    manifest.json              the key the cache was made for, its shards, and whether it is complete
    shard_00000.safetensors    one per `videos_per_shard` videos (in order of first appearance)

A shard holds, for its videos and every caption of them, what the teacher's scorer (`distill.core.scorers`) gives:
    `text.<name> [c, ...]`: a row per caption (`scorer.texts`: unit vectors for two-tower teachers, the
        cross encoder's text features for tightTransf);
    `video.<name> [v, ...]`: a row per video (`scorer.videos`: embeddings, or frame features and masks,
        so distillation runs the cross encoder over each global batch but encodes no frame again);
    `shared.<name> []`: values every score needs (the logit scale of a two-tower teacher);
    `text_pairs [c]`: the pair (dataset index) of each caption; `text_videos [c]`: the row of its video
        among the cache's videos; `video_pairs [v]`: the first pair of each video; `video_valid [v]`: 0 for
        a video that failed to decode while the cache was built.
Features are float32, so distillation from the cache equals online distillation up to rounding; float16
would halve the size (a ViT-B/32 tightTransf cache of MSR-VTT's 9k videos, 12 frames: 220 MB in float32).

The key (`cache_key`) names the dataset (hash of its video ids and captions), the sampling of the
teacher's view and the teacher (hash of its architecture and weights). A cache stage that finds a cache
with the same key finishes it (shards are written one by one, each to a temporary name then renamed);
any other cache in the folder is replaced. Distillation refuses a cache whose key differs, naming what
differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Subset

from distill.core.files import atomic_text, atomic_write, diff_dicts
from distill.core.scorers import scorer_for
from distill.data.dataset import VideoTextDataset
from teachers.export import teacher_sha256

FORMAT = "clip4clip-distill/teacher-cache-2"  # 2: tensors grouped by text., video., shared.


class CacheError(ValueError):
    """A cache that cannot be used for this run: made for other data, sampling or teacher, or unfinished."""


def dataset_key(dataset: VideoTextDataset) -> dict:
    """The pairs of a dataset: their number, their videos' and a hash of every (video, caption), the videos
    by their path below the folder that holds them all, so a data root copied or moved keeps its key."""
    folder = os.path.commonpath([os.path.dirname(v) for v in dataset.video_ids]) if len(dataset) else ""
    pairs = json.dumps([[os.path.relpath(v, folder) for v in dataset.video_ids], dataset.captions]).encode()
    return {"pairs": len(dataset), "videos": len(dataset.first_pairs()), "sha256": hashlib.sha256(pairs).hexdigest()}


def teacher_key(teacher: nn.Module, sha256: str | None = None) -> dict:
    """A frozen teacher by its head, the precision it computes in and its weights (their `teacher_sha256`,
    computed here unless given: `Run.teacher_key` keeps each teacher's)."""
    return {
        "sim_header": teacher.sim_header,
        "precision": teacher.precision,
        "sha256": sha256 or teacher_sha256(teacher),
    }


def cache_key(dataset: VideoTextDataset, teacher: dict, sampling: dict) -> dict:
    """What a cache is valid for. `teacher`: its `teacher_key`; `sampling`: everything that shapes the
    teacher's view of a clip and its tokens (frames, size, frame rate, slicing, max_words, decoder)."""
    return {"dataset": dataset_key(dataset), "sampling": sampling, "teacher": teacher}


def differences(cached: dict, wanted: dict) -> list[str]:
    """`dotted.key: A in the cache, B in this run` for every leaf that differs."""
    return [f"{key}: {a!r} in the cache, {b!r} in this run" for key, a, b in diff_dicts(cached, wanted)]


def group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors named `<prefix>.<name>`, by name."""
    return {name.removeprefix(f"{prefix}."): t for name, t in tensors.items() if name.startswith(f"{prefix}.")}


def read_manifest(cache_dir: Path) -> dict | None:
    path = cache_dir / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_manifest(cache_dir: Path, manifest: dict) -> None:
    atomic_text(cache_dir / "manifest.json", json.dumps(manifest, indent=1))


@torch.no_grad()
def encode_shard(
    teacher: nn.Module,
    dataset: VideoTextDataset,
    videos: list[int],
    captions: list[int],
    *,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
) -> dict[str, torch.Tensor]:
    """The teacher's outputs for the videos of the pairs `videos` (first pairs) and the captions of the
    pairs `captions`; `num_workers` DataLoader processes decode the clips."""
    scorer = scorer_for(teacher)
    out: dict[str, list[torch.Tensor]] = {}
    valid: list[torch.Tensor] = []

    def add(group: str, rows: dict[str, torch.Tensor]) -> None:
        for name, value in rows.items():
            out.setdefault(f"{group}.{name}", []).append(value.cpu())

    for start in range(0, len(captions), batch_size):
        rows = captions[start : start + batch_size]
        add("text", scorer.texts(dataset.input_ids[rows].to(device), dataset.attention_mask[rows].to(device)))
    loader = DataLoader(Subset(dataset, videos), batch_size=batch_size, num_workers=num_workers)
    for start, batch in zip(range(0, len(videos), batch_size), loader):
        # A video that fails now yields the next readable pair: its row is marked and never looked up,
        # because distillation replaces that video's pairs the same way.
        valid.append(
            torch.tensor(
                [
                    dataset.video_ids[got] == dataset.video_ids[asked]
                    for got, asked in zip(batch["index"].tolist(), videos[start : start + batch_size])
                ]
            )
        )
        video, mask = batch["teacher_video"].to(device), batch["teacher_mask"].to(device)
        add("video", scorer.videos(teacher.frame_features(video), mask))
    tensors = {name: torch.cat(parts) for name, parts in out.items()}
    tensors["video_valid"] = torch.cat(valid).to(torch.uint8)
    tensors["video_pairs"] = torch.tensor(videos)
    tensors["text_pairs"] = torch.tensor(captions)
    tensors.update({f"shared.{name}": value.cpu() for name, value in scorer.shared().items()})
    return {name: t.contiguous() for name, t in tensors.items()}


def build_cache(
    cache_dir: Path,
    teacher: nn.Module,
    dataset: VideoTextDataset,
    key: dict,
    *,
    accelerator: Accelerator,
    batch_size: int,
    videos_per_shard: int,
    num_workers: int = 0,
) -> int:
    """Writes the teacher's outputs for every pair of `dataset` (which must yield the "teacher" view) and
    returns how many shards were computed now (0: the cache was already complete).

    Shards are split over the processes; an unfinished cache with the same key is finished, any other
    cache in `cache_dir` replaced. The teacher computes in its own `precision` (part of the key).
    """
    videos = dataset.first_pairs()
    row = {dataset.video_ids[i]: r for r, i in enumerate(videos)}
    shards = [videos[i : i + videos_per_shard] for i in range(0, len(videos), videos_per_shard)]
    names = [f"shard_{k:05d}.safetensors" for k in range(len(shards))]
    manifest = {
        "format": FORMAT,
        "key": key,
        "videos_per_shard": videos_per_shard,
        "shards": names,
        "dtype": "float32",
        "complete": False,
    }
    found = read_manifest(cache_dir)
    if accelerator.is_main_process:
        if found is None or {**found, "complete": False} != manifest:
            if found is not None:
                why = differences(found.get("key", {}), key) or ["videos_per_shard or format"]
                accelerator.print(f"cache: replacing the cache in {cache_dir} ({'; '.join(why)})")
            shutil.rmtree(cache_dir, ignore_errors=True)
            cache_dir.mkdir(parents=True)
            write_manifest(cache_dir, manifest)
    accelerator.wait_for_everyone()
    todo = [k for k, name in enumerate(names) if not (cache_dir / name).is_file()]
    accelerator.wait_for_everyone()  # every process has listed the missing shards before any is written
    if len(todo) < len(names):
        accelerator.print(f"cache: {len(names) - len(todo)} of {len(names)} shards already in {cache_dir}")
    shard_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    for k in todo[accelerator.process_index :: accelerator.num_processes]:
        captions = [i for i, video in enumerate(dataset.video_ids) if row[video] // videos_per_shard == k]
        tensors = encode_shard(
            teacher,
            dataset,
            shards[k],
            captions,
            batch_size=batch_size,
            device=accelerator.device,
            num_workers=num_workers,
        )
        tensors["text_videos"] = torch.tensor([row[dataset.video_ids[i]] for i in captions])
        atomic_write(
            cache_dir / names[k], lambda p: save_file(tensors, str(p), metadata={"format": FORMAT, "key": shard_key})
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_manifest(cache_dir, {**manifest, "complete": True})
    accelerator.wait_for_everyone()
    return len(todo)


class TeacherCache:
    """The cached teacher outputs, held in memory; `cache(micro_batches)` gives the step's teacher outputs
    from the pair indices, as `distill.training.train.OnlineTeacher` gives them from its view of the clips.

    Args:
        teacher: the teacher whose cross encoder scores the cached features (tightTransf only).
    """

    def __init__(self, cache_dir: Path, key: dict, teacher: nn.Module, *, device: torch.device):
        manifest = read_manifest(cache_dir)
        if manifest is None or manifest.get("format") != FORMAT:
            raise CacheError(f"teacher cache {cache_dir}: no manifest.json of a teacher cache")
        if diff := differences(manifest["key"], key):
            raise CacheError(
                f"teacher cache {cache_dir} was made for another run ({'; '.join(diff)}); rebuild it "
                "with the 'cache' stage before 'distill', or set teacher.cache=false to run the teacher "
                "online"
            )
        missing = [name for name in manifest["shards"] if not (cache_dir / name).is_file()]
        if not manifest["complete"] or missing:
            raise CacheError(
                f"teacher cache {cache_dir} is unfinished ({len(missing)} of {len(manifest['shards'])} "
                "shards missing): run the 'cache' stage again to finish it, or set teacher.cache=false"
            )
        shard_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        parts: dict[str, list[torch.Tensor]] = {}
        for name in manifest["shards"]:
            with safe_open(str(cache_dir / name), framework="pt") as f:
                if f.metadata().get("key") != shard_key:
                    raise CacheError(
                        f"teacher cache: {cache_dir / name} belongs to another cache; run the 'cache' stage again"
                    )
            for tensor_name, tensor in load_file(str(cache_dir / name)).items():
                parts.setdefault(tensor_name, []).append(tensor)
        cat = {name: torch.cat(ts) if ts[0].ndim else ts[0] for name, ts in parts.items()}
        self.scorer, self.device = scorer_for(teacher), device
        pairs = key["dataset"]["pairs"]
        written = torch.zeros(pairs, dtype=torch.bool)
        written[cat["text_pairs"]] = True
        if not written.all():
            missing = (~written).nonzero().flatten().tolist()
            raise CacheError(
                f"teacher cache {cache_dir} has no teacher outputs for {len(missing)} of its {pairs} "
                f"pairs (first: {missing[:5]}); run the 'cache' stage again to rebuild it"
            )
        # Each pair's text rows and video row, from the pair indices the shards store.
        self.text = {}
        for name, value in group(cat, "text").items():
            self.text[name] = value.new_empty((pairs, *value.shape[1:]))
            self.text[name][cat["text_pairs"]] = value
        self.video_row = torch.empty(pairs, dtype=torch.long)
        self.video_row[cat["text_pairs"]] = cat["text_videos"]
        self.valid = cat["video_valid"].bool()
        self.video = group(cat, "video")
        self.shared = {name: value.to(device) for name, value in group(cat, "shared").items()}

    @torch.no_grad()
    def __call__(self, batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        # The step's global batch, in the order of the gathered student outputs (`distill.training.train`).
        index = torch.cat([gather(batch["index"]) for batch in batches]).cpu()
        rows = self.video_row[index]
        if not self.valid[rows].all():
            bad = index[~self.valid[rows]].tolist()
            raise CacheError(
                f"teacher cache: pairs {bad} have no teacher outputs: their video failed to decode "
                "while the cache was built but decodes now; run the 'cache' stage again"
            )
        outputs = {
            **{name: value[index].to(self.device) for name, value in self.text.items()},
            **{name: value[rows].to(self.device) for name, value in self.video.items()},
            **self.shared,
        }
        return self.scorer.loss_inputs(outputs)
