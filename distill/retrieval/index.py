"""Command line: `python -m distill.index MODEL VIDEOS --out INDEX_DIR`: embed a folder of videos for search.

MODEL is a student export (its file or model card folder), any `teachers.load_teacher` source with
embeddings (not tightTransf), or with `--runtime onnx` a folder of a student's ONNX encoders (written by
`python -m students.onnx`). VIDEOS is a folder, walked recursively for the containers decord reads, or a
`.jsonl` or `.csv` list with a `video` path a line (relative to the list's folder). `--segment SECONDS`
cuts every video into segments of that many seconds, an entry each, as one would index long videos.

An index folder holds
    index.json                    the format, the model's record (`distill.retrieval.encoders`: source, fingerprint,
                                  embedding space) and preprocessing, the segment length, the count, the shards,
                                  the folder indexed (`videos`: the folder of a list)
    embeddings-00000.safetensors  `embeddings [n, D]`, float16, L2-normalised, SHARD_ROWS rows a shard
    entries.jsonl                 a line an embedding: path, size and mtime of the file, start and end (s),
                                  the video's duration (s)
    failed.txt                    the videos that could not be read, with why (never embedded)
    faiss.index                   with `--faiss`: an approximate index for large galleries (`distill.retrieval.ann`)

A second run with the same model, sampling and segment length embeds only new or changed files (size or
mtime) and drops deleted ones (`--faiss` builds the approximate index again; a run without it has none).
Nothing is lost on a kill: videos are embedded in chunks of 8 batches, each saved to `INDEX_DIR.work/` as
it is done, and a run started again embeds only the files no saved chunk holds as they are now; the index
itself is filled under a temporary name and renamed into place, the old one renamed aside first and deleted
last: a kill at any instant leaves a whole index at `INDEX_DIR` or at `INDEX_DIR.old`, which search reads
and the next run puts back.
Through `accelerate launch -m distill.index ...` several processes (or machines sharing the folder) each
embed every n-th chunk, and the main process writes the index: the same as one process writes, since a
chunk's batches do not depend on the number of processes.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from distill.core.commands import command_parser
from distill.core.files import atomic_dir, atomic_write, restore_dir
from distill.retrieval import ann
from distill.retrieval.embed import embed_videos
from distill.retrieval.encoders import Encoder, load_encoder

FORMAT, VERSION = "clip4clip-distill/index", 2
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}
SHARD_ROWS = 65_536  # 64 MB of 512-d float16 a shard
BATCHES_PER_CHUNK = 8  # what a kill can cost, and the share one process takes at a time


class IndexFolderError(ValueError):
    """An index folder that cannot be used as asked: missing, foreign, made by another model."""


def list_videos(videos: Path) -> list[Path]:
    """The video files under a folder (sorted), or those a `.jsonl` or `.csv` list names in its `video`
    field (relative to the list's folder), in its order."""
    videos = videos.resolve()  # entries name files wherever search runs from
    if videos.is_dir():
        found = sorted(p for p in videos.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise IndexFolderError(f"{videos}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in it or below")
        return found
    if videos.suffix in (".jsonl", ".csv") and videos.is_file():
        with open(videos, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark, as Excel writes
            lines = list(csv.DictReader(f)) if videos.suffix == ".csv" else [json.loads(x) for x in f if x.strip()]
        if missing := next((i + 1 for i, line in enumerate(lines) if not line.get("video")), None):
            raise IndexFolderError(f"{videos}: entry {missing} has no 'video' field")
        if not lines:
            raise IndexFolderError(f"{videos}: lists no videos")
        return [(videos.parent / line["video"]).resolve() for line in lines]
    raise IndexFolderError(f"{videos}: neither a folder of videos nor a .jsonl or .csv list of them")


def read_info(folder: Path) -> dict:
    path = folder / "index.json"
    if not path.is_file():
        raise IndexFolderError(f"{folder}: not an index (no index.json); build one with python -m distill.index")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise IndexFolderError(f"{folder}: index.json is not a {FORMAT} index")
    if info.get("version") != VERSION:
        raise IndexFolderError(
            f"{folder}: an index of version {info.get('version', 1)}, this is version {VERSION}; delete it and "
            "build it again"
        )
    return info


def read_index(folder: Path) -> tuple[dict, list[dict], torch.Tensor]:
    """`(index.json, entries, embeddings [N, D] float16)` of an index folder, all of it in memory."""
    info = read_info(folder)
    check_shards(folder, info)
    entries = [json.loads(line) for line in (folder / "entries.jsonl").read_text().splitlines()]
    if len(entries) != info["count"]:
        raise IndexFolderError(
            f"{folder / 'entries.jsonl'}: {len(entries)} entries for {info['count']} embeddings; rebuild the index"
        )
    shards = list(shard_embeddings(folder, info))
    embeddings = torch.cat(shards) if shards else torch.empty(0, info["model"]["embed_dim"], dtype=torch.float16)
    return info, entries, embeddings


def check_shards(folder: Path, info: dict) -> None:
    """Stops unless the shards hold `info["count"]` rows of the model's width, read from their headers (no
    embedding is loaded)."""
    rows, dim = 0, info["model"]["embed_dim"]
    for name in info["shards"]:
        with safe_open(str(folder / name), framework="pt") as f:
            shape = f.get_slice("embeddings").get_shape()
        if shape[1] != dim:
            raise IndexFolderError(
                f"{folder / name}: {shape[1]}-d embeddings, the model's are {dim}-d; rebuild the index"
            )
        rows += shape[0]
    if rows != info["count"]:
        raise IndexFolderError(
            f"{folder / 'index.json'}: count {info['count']}, but its shards hold {rows} embeddings; rebuild the index"
        )


def shard_embeddings(folder: Path, info: dict) -> Iterator[torch.Tensor]:
    """Each shard's `embeddings [n, D]` float16 in row order, loaded as it is reached: a scan of the gallery
    holds one shard (SHARD_ROWS rows) at a time."""
    for name in info["shards"]:
        yield load_file(str(folder / name))["embeddings"]


def entries_at(folder: Path, info: dict, rows: Sequence[int]) -> list[dict]:
    """The entries of `rows`, in their order: the entries file read line by line and only those lines parsed,
    so a search holds a few entries, not a million."""
    wanted, found, count = set(rows), {}, 0
    with open(folder / "entries.jsonl", encoding="utf-8") as f:
        for count, line in enumerate(f, start=1):  # count: the lines read so far
            if count - 1 in wanted:
                found[count - 1] = json.loads(line)
    if count != info["count"]:
        raise IndexFolderError(
            f"{folder / 'entries.jsonl'}: {count} entries for {info['count']} embeddings; rebuild the index"
        )
    return [found[row] for row in rows]


def launch_state() -> PartialState:
    """The processes `accelerate launch` started (one without it); on CPUs too, as `Accelerator` reads it."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def settings_of(record: dict, encoder: Encoder, segment: int | None) -> dict:
    """What an embedding depends on besides its file: the model, how it reads clips, the segment length."""
    return {"sha256": record["sha256"], "preprocessing": dataclasses.asdict(encoder.preprocessing), "segment": segment}


def save_chunk(path: Path, found, stats: dict, settings: dict) -> None:
    """A chunk's embeddings, entries and failures (with the size and mtime of each file) and settings."""
    entries = [
        {"path": p, "size": stats[p].st_size, "mtime": stats[p].st_mtime_ns, "start": s, "end": e, "duration": d}
        for p, (s, e), d in zip(found.paths, found.spans, found.durations)
    ]
    failed = {p: [why, stats[p].st_size, stats[p].st_mtime_ns] for p, why in found.failed.items()}
    metadata = {"entries": json.dumps(entries), "failed": json.dumps(failed), "settings": json.dumps(settings)}
    tensors = {"embeddings": found.embeddings.half().contiguous()}
    atomic_write(path, lambda partial: save_file(tensors, str(partial), metadata=metadata))


def saved_chunks(work: Path, stats: dict, settings: dict) -> tuple[dict[str, list], dict[str, str]]:
    """The entries (with their rows) and the failures the chunks in `work` hold for files that are as they
    were then (size, mtime), made with these settings: `(entries by path, failures by path)`."""
    entries: dict[str, list[tuple[dict, torch.Tensor]]] = {}
    failed: dict[str, str] = {}

    def same(path: str, size: int, mtime: int) -> bool:
        return stats.get(path) is not None and (stats[path].st_size, stats[path].st_mtime_ns) == (size, mtime)

    for file in sorted(work.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            metadata, embeddings = f.metadata(), f.get_tensor("embeddings")
        if json.loads(metadata["settings"]) != settings:
            continue
        found: dict[str, list[tuple[dict, torch.Tensor]]] = {}
        for entry, row in zip(json.loads(metadata["entries"]), embeddings):
            if same(entry["path"], entry["size"], entry["mtime"]):
                found.setdefault(entry["path"], []).append((entry, row))
        entries = {**found, **entries}  # a file two killed runs embedded: the first chunk's entries
        failed |= {p: why for p, (why, size, mtime) in json.loads(metadata["failed"]).items() if same(p, size, mtime)}
    return entries, failed


def previous_index(out: Path, settings: dict, source: str) -> dict[str, list[tuple[dict, torch.Tensor]]]:
    """The entries (with their rows) of the index at `out`, by path, if it was made with these settings;
    none if there is no index there."""
    if not (out / "index.json").is_file():
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise IndexFolderError(f"{out} exists and is not an index: index into a new or empty folder")
        return {}
    info, entries, embeddings = read_index(out)
    model = info["model"]
    if model["sha256"] != settings["sha256"]:
        raise IndexFolderError(
            f"{out} was built with another model ({model['source']}, sha256 {model['sha256'][:12]}), not "
            f"{source} ({settings['sha256'][:12]}); index into another folder"
        )
    if info["segment"] != settings["segment"]:
        raise IndexFolderError(
            f"{out} holds segments of {info['segment']} s, not {settings['segment']} s (--segment); index into "
            "another folder"
        )
    if info["preprocessing"] != settings["preprocessing"]:
        raise IndexFolderError(
            f"{out} was built reading clips as {info['preprocessing']}, but {source} reads them as "
            f"{settings['preprocessing']}; index into another folder"
        )
    kept: dict[str, list[tuple[dict, torch.Tensor]]] = {}
    for entry, row in zip(entries, embeddings):
        kept.setdefault(entry["path"], []).append((entry, row))
    return kept


def build_index(
    encoder: Encoder,
    record: dict,
    videos: list[Path],
    out: Path,
    *,
    segment: int | None = None,
    root: Path | None = None,
    faiss: bool = False,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, int] | None:
    """Writes the index of `videos` to `out` (with `faiss`, and an approximate index of it), reusing the
    embeddings of an index there made with the same settings for files that did not change, and those the
    chunks of a killed run saved; returns the counts of videos embedded, resumed (from a killed run), kept,
    dropped and failed, or None on a process that is not the main one. `root`, the folder that was indexed
    (or the folder of the list), is recorded so that pages can show each path below it."""
    state = launch_state()
    settings = settings_of(record, encoder, segment)
    if state.is_main_process:
        restore_dir(out)  # an index a killed replacement left aside
    state.wait_for_everyone()
    kept = previous_index(out, settings, record["source"])
    stats = {str(p): p.stat() if p.is_file() else None for p in videos}
    unchanged = {
        path
        for path, stat in stats.items()
        if stat is not None
        and path in kept
        and (kept[path][0][0]["size"], kept[path][0][0]["mtime"]) == (stat.st_size, stat.st_mtime_ns)
    }
    work = out.with_name(f"{out.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    resumed, resumed_failed = saved_chunks(work, stats, settings)
    state.wait_for_everyone()  # every process has seen the same saved chunks before any writes one
    todo = [
        p for p, stat in stats.items() if stat and p not in unchanged and p not in resumed and p not in resumed_failed
    ]
    size = batch_size * BATCHES_PER_CHUNK
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    # Chunk files named by this run's work, the same in every process: a name from an earlier run holds the
    # same files' embeddings made with the same settings.
    run = hashlib.sha256(json.dumps([settings, [(p, stats[p].st_size, stats[p].st_mtime_ns) for p in todo]]).encode())
    names = [work / f"{run.hexdigest()[:16]}-{i:06d}.safetensors" for i in range(len(chunks))]
    mine = range(state.process_index, len(chunks), state.num_processes)
    bar = tqdm(total=sum(len(chunks[i]) for i in mine), desc="index", unit="video", disable=not progress)
    for i in mine:
        found = embed_videos(encoder, chunks[i], batch_size=batch_size, num_workers=num_workers, segment=segment)
        save_chunk(names[i], found, stats, settings)
        bar.update(len(chunks[i]))
    bar.close()
    if not state.is_main_process:
        return None
    # The other processes' chunks: waited for as files, not at a barrier (one with a time limit), since a
    # process may take far longer than another; `accelerate launch` stops every process if one fails.
    while not all(name.is_file() for name in names):
        time.sleep(1)
    new, failed = saved_chunks(work, stats, settings)
    failed |= {path: "no such file" for path, stat in stats.items() if stat is None}
    rows = [row for path in stats for row in (kept[path] if path in unchanged else new.get(path, []))]
    entries = [entry for entry, _ in rows]
    embeddings = torch.stack([row for _, row in rows]) if rows else torch.empty(0, record["embed_dim"]).half()
    shards = [f"embeddings-{i:05d}.safetensors" for i in range(0, len(embeddings), SHARD_ROWS)]
    info = {"format": FORMAT, "version": VERSION, "model": record, **settings, "count": len(entries)}
    info["videos"] = None if root is None else str(root.resolve())
    del info["sha256"]  # the model record holds it
    with atomic_dir(out) as partial:
        for k, name in enumerate(shards):
            shard = embeddings[k * SHARD_ROWS : (k + 1) * SHARD_ROWS].contiguous()
            save_file({"embeddings": shard}, str(partial / name))
        (partial / "entries.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
        (partial / "failed.txt").write_text("".join(f"{path}\t{why}\n" for path, why in failed.items()))
        if faiss and len(embeddings):
            ann.save(ann.build(embeddings), partial / ann.FILE)
            info["faiss"] = ann.FILE
        (partial / "index.json").write_text(json.dumps({**info, "shards": shards}, indent=1))
    for chunk in [*work.glob("*.safetensors"), *work.glob("*.safetensors.partial")]:  # only what we wrote
        chunk.unlink()
    if not any(work.iterdir()):
        work.rmdir()
    return {
        "embedded": len(set(new) - set(resumed)),
        "resumed": len(set(new) & set(resumed)),
        "kept": len(unchanged),
        "dropped": len(set(kept) - set(stats)),
        "failed": len(failed),
    }


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("index")
    args = parser.parse_args(argv)
    if args.segment is not None and args.segment < 1:
        parser.error(f"--segment {args.segment}: expected a positive number of seconds")
    if args.faiss:
        ann.faiss_module()  # not installed: say so before any video is embedded
    state = launch_state()
    try:
        encoder, record = load_encoder(args.model, args.runtime, state.device)
        counts = build_index(
            encoder,
            record,
            list_videos(args.videos),
            args.out,
            segment=args.segment,
            root=args.videos if args.videos.is_dir() else args.videos.parent,
            faiss=args.faiss,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=state.is_main_process,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if counts is not None:
        print(
            f"index {args.out}: {counts['embedded']} videos embedded, {counts['resumed']} resumed, "
            f"{counts['kept']} kept, {counts['dropped']} dropped, {counts['failed']} could not be read"
            + (f" (listed in {args.out / 'failed.txt'})" if counts["failed"] else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
