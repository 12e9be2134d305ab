"""Command line: `python -m distill.index MODEL VIDEOS --out INDEX_DIR`: embed a folder of videos for search.

MODEL is a student export or any `teachers.load_teacher` source with embeddings (not tightTransf). VIDEOS
is a folder, walked recursively for the containers decord reads, or a `.jsonl` file with a `video` path a
line. An index folder holds
    index.json            the format, the model (its path, sha256 and embedding width) and the count
    embeddings.safetensors `embeddings [N, D]`, float16, L2-normalised
    entries.jsonl         a line per embedding: path, size and mtime of the file
    failed.txt            the videos that could not be read, with why (never embedded)
A second run with the same model embeds only new or changed files (size or mtime) and drops deleted ones.
The folder is written under a temporary name and swapped in, so a kill leaves the previous index whole.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from distill.embed import embed_videos
from distill.files import atomic_dir

FORMAT = "clip4clip-distill/index"
VIDEO_SUFFIXES = {".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp"}


class IndexFolderError(ValueError):
    """An index folder that cannot be used as asked: missing, foreign, made by another model."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_model(source: str) -> tuple[nn.Module, dict]:
    """The model of `source` (a student export, else a teacher source) and its record for the index."""
    from students import load_student, read_metadata
    from teachers import load_teacher, parse_open_clip_source

    file = Path(parse_open_clip_source(source)[1] if source.startswith("open_clip:") else source)
    if not file.is_file():
        raise FileNotFoundError(f"model {source}: no such file")
    try:
        read_metadata(file)
    except ValueError:  # not a student export: a teacher source (a damaged student says so below)
        model, kind = load_teacher(source), "teacher"
    else:
        model, kind = load_student(file), "student"
    where = source if source.startswith("open_clip:") else str(file.resolve())
    record = {"source": where, "kind": kind, "sha256": sha256_of(file), "embed_dim": model.embed_dim}
    return model, record


def list_videos(videos: Path) -> list[Path]:
    """The video files under a folder (sorted), or those a `.jsonl` list names (relative to its folder)."""
    if videos.is_dir():
        found = sorted(p for p in videos.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        if not found:
            raise IndexFolderError(f"{videos}: no video files ({', '.join(sorted(VIDEO_SUFFIXES))}) in it or below")
        return found
    if videos.suffix == ".jsonl" and videos.is_file():
        lines = [json.loads(line) for line in videos.read_text().splitlines() if line.strip()]
        return [(videos.parent / line["video"]).resolve() for line in lines]
    raise IndexFolderError(f"{videos}: neither a folder of videos nor a .jsonl list of them")


def read_index(folder: Path) -> tuple[dict, list[dict], torch.Tensor]:
    """`(index.json, entries, embeddings [N, D] float16)` of an index folder."""
    path = folder / "index.json"
    if not path.is_file():
        raise IndexFolderError(f"{folder}: not an index (no index.json); build one with python -m distill.index")
    info = json.loads(path.read_text())
    if info.get("format") != FORMAT:
        raise IndexFolderError(f"{folder}: index.json is not a {FORMAT} index")
    entries = [json.loads(line) for line in (folder / "entries.jsonl").read_text().splitlines()]
    embeddings = load_file(str(folder / "embeddings.safetensors"))["embeddings"]
    if len(entries) != len(embeddings) or len(entries) != info["count"]:
        raise IndexFolderError(f"{folder}: {len(entries)} entries for {len(embeddings)} embeddings; rebuild the index")
    return info, entries, embeddings


def build_index(
    model: nn.Module,
    record: dict,
    videos: list[Path],
    out: Path,
    *,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, int]:
    """Writes the index of `videos` to `out`, reusing the embeddings of an index there made by the same model
    for files that did not change; returns the counts embedded, kept, dropped and failed."""
    kept: dict[str, tuple[dict, torch.Tensor]] = {}
    if (out / "index.json").is_file():
        info, entries, embeddings = read_index(out)
        if info["model"]["sha256"] != record["sha256"]:
            raise IndexFolderError(
                f"{out} was built with another model ({info['model']['source']}, sha256 "
                f"{info['model']['sha256'][:12]}), not {record['source']} ({record['sha256'][:12]}); "
                "index into another folder"
            )
        kept = {entry["path"]: (entry, row) for entry, row in zip(entries, embeddings)}
    files = {str(p): p.stat() if p.is_file() else None for p in videos}
    unchanged = {
        path
        for path, stat in files.items()
        if stat is not None
        and path in kept
        and (kept[path][0]["size"], kept[path][0]["mtime"]) == (stat.st_size, stat.st_mtime_ns)
    }
    todo = [path for path in files if path not in unchanged]
    done = embed_videos(model, todo, batch_size=batch_size, num_workers=num_workers, progress=progress)
    new = dict(zip(done.paths, done.embeddings.half()))
    entries, rows = [], []
    for path, stat in files.items():
        if path in unchanged:
            entry, row = kept[path]
        elif path in new:
            entry, row = {"path": path, "size": stat.st_size, "mtime": stat.st_mtime_ns}, new[path]
        else:
            continue
        entries.append(entry)
        rows.append(row)
    failed = {**done.failed, **{path: "no such file" for path, stat in files.items() if stat is None}}
    info = {"format": FORMAT, "model": record, "count": len(entries)}
    embeddings = torch.stack(rows) if rows else torch.empty(0, record["embed_dim"], dtype=torch.float16)
    with atomic_dir(out) as partial:
        save_file({"embeddings": embeddings.contiguous()}, str(partial / "embeddings.safetensors"))
        (partial / "entries.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in entries))
        (partial / "failed.txt").write_text("".join(f"{path}\t{why}\n" for path, why in failed.items()))
        (partial / "index.json").write_text(json.dumps(info, indent=1))
    return {"embedded": len(new), "kept": len(unchanged), "dropped": len(set(kept) - set(files)), "failed": len(failed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a student export (.safetensors) or a teacher source")
    parser.add_argument("videos", type=Path, help="a folder of videos (searched recursively) or a .jsonl list")
    parser.add_argument("--out", type=Path, required=True, help="the index folder")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding the videos")
    args = parser.parse_args(argv)
    try:
        model, record = load_model(args.model)
        counts = build_index(
            model,
            record,
            list_videos(args.videos),
            args.out,
            batch_size=args.batch_size,
            num_workers=args.workers,
            progress=True,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"index {args.out}: {counts['embedded']} videos embedded, {counts['kept']} kept, {counts['dropped']} "
        f"dropped, {counts['failed']} could not be read"
        + (f" (listed in {args.out / 'failed.txt'})" if counts["failed"] else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
