"""Command line: search an index (`distill.retrieval.index`) by caption or by video.

    python -m distill.search INDEX_DIR "a small red circle moves left" --top 5 [--html results.html]
    python -m distill.search INDEX_DIR --video some/clip.mp4 --top 5 --json
    python -m distill.search INDEX_DIR --also OTHER_INDEX --model TEACHER "a red circle"

Prints a table of the best entries (rank, score, path, start and end in seconds) or, with `--json`, one JSON
object a line, best first; `--html FILE` also writes a page with the frames of each hit. The query is
embedded by the model the index was built with (found where it records, and checked against its
fingerprint), or by `--model` (on `--runtime`), which must be in the index's embedding space, as must every
`--also` index searched with it: a query never lands in another model's space. The search is exact, a
shard of the gallery read at a time and scored in chunks (one float16 shard and one chunk's float32 copy in
memory, whatever the gallery's size), or with an index built with `--faiss`, approximate (the FAISS index in
memory, no shard's embeddings read; `--exact` scans them anyway). Only the entries of the hits are parsed,
after the scan: a damaged entries file is found then.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path

import torch

from distill.core.commands import command_parser
from distill.core.files import complete_dir
from distill.retrieval import ann
from distill.retrieval.embed import embed_texts, embed_videos
from distill.retrieval.encoders import load_encoder
from distill.retrieval.index import IndexFolderError, check_shards, entries_at, read_info, shard_embeddings

CHUNK = 4_096  # gallery rows scored at once (8 MB of float32 at 512-d): small chunks scan faster (BENCHMARKS.md)


def top_k(query: torch.Tensor, shards: Iterable[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best `(scores, rows)` of `query [D] @ gallery [N, D].T`, best first, where the gallery is the
    rows of `shards` one after another (an index's `shard_embeddings`, or `[gallery]`), chunk by chunk."""
    best_scores, best_rows, offset = torch.empty(0), torch.empty(0, dtype=torch.long), 0
    for shard in shards:
        for start in range(0, len(shard), CHUNK):
            scores = shard[start : start + CHUNK].float() @ query
            scores, rows = scores.topk(min(k, len(scores)))
            best_scores, order = torch.cat([best_scores, scores]).topk(min(k, len(best_scores) + len(scores)))
            best_rows = torch.cat([best_rows, rows + offset + start])[order]
        offset += len(shard)
    return best_scores, best_rows


def query_encoder(infos: dict[Path, dict], model: str | None, runtime: str | None):
    """The encoder for queries to these indexes: `model` on `runtime`, or the first index's own model;
    refused unless every index and the model are in one embedding space."""
    first, info = next(iter(infos.items()))
    for folder, other in infos.items():
        if other["model"]["space"] != info["model"]["space"]:
            raise IndexFolderError(
                f"{folder} ({other['model']['source']}) and {first} ({info['model']['source']}) hold embeddings "
                "of different spaces; search them apart"
            )
    recorded = info["model"]
    encoder, record = load_encoder(model or recorded["source"], runtime or ("torch" if model else recorded["runtime"]))
    if model is None and record["sha256"] != recorded["sha256"]:
        raise IndexFolderError(
            f"{first} was built with {recorded['source']} at sha256 {recorded['sha256'][:12]}, but the file there "
            f"now has sha256 {record['sha256'][:12]}: its embeddings are in another space; rebuild the index"
        )
    if record["space"] != recorded["space"]:
        raise IndexFolderError(
            f"{record['source']} embeds in space {record['space'][:20]}, {first} (built with {recorded['source']}) "
            f"holds space {recorded['space'][:20]}: their embeddings are not comparable; query with a model of "
            "the index's space"
        )
    return encoder


def search(
    folders: list[Path],
    *,
    caption: str | None = None,
    video: Path | None = None,
    top: int = 5,
    model: str | None = None,
    runtime: str | None = None,
    exact: bool = False,
    nprobe: int = ann.NPROBE,
) -> tuple[list[dict], dict[Path, dict]]:
    """The `top` entries of the indexes nearest to a caption or to a video, best first: `{"rank", "score",
    "path", "start", "end", "index"}`, and each index's `index.json`."""
    folders = [complete_dir(folder) for folder in folders]  # an index a killed rebuild left aside
    infos = {folder: read_info(folder) for folder in folders}
    for folder, info in infos.items():
        check_shards(folder, info)
    encoder = query_encoder(infos, model, runtime)
    if video is not None:
        found = embed_videos(encoder, [str(video)])
        if found.failed:
            raise IndexFolderError(f"query video: {found.failed[str(video)]}")
        query = found.embeddings[0]
    else:
        query = embed_texts(encoder, [caption])[0]
    hits = []
    for folder, info in infos.items():  # one folder's gallery in memory at a time, a shard of it when exact
        if info.get("faiss") and not exact:
            if not (folder / info["faiss"]).is_file():
                raise IndexFolderError(f"{folder}: its {info['faiss']} is missing; rebuild the index or use --exact")
            approximate = ann.load(folder / info["faiss"])
            if approximate.ntotal != info["count"]:
                raise IndexFolderError(
                    f"{folder / info['faiss']}: {approximate.ntotal} vectors for {info['count']} entries; rebuild "
                    "the index or use --exact"
                )
            scores, rows = ann.top_k(approximate, query, top, nprobe)
        else:
            scores, rows = top_k(query, shard_embeddings(folder, info), top)
        hits += [(s, folder, e) for s, e in zip(scores.tolist(), entries_at(folder, info, rows.tolist()))]
    hits = sorted(hits, key=lambda hit: -hit[0])[:top]
    return [
        {"rank": i + 1, "score": round(s, 4), "path": e["path"], "start": e["start"], "end": e["end"], "index": str(f)}
        for i, (s, f, e) in enumerate(hits)
    ], infos


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("search")
    args = parser.parse_args(argv)
    if (args.caption is None) == (args.video is None):
        parser.error("give a caption or --video PATH (one of them)")
    if args.top < 1 or args.nprobe < 1:
        parser.error(f"--top {args.top}, --nprobe {args.nprobe}: expected positive numbers")
    try:
        hits, infos = search(
            [args.index, *args.also],
            caption=args.caption,
            video=args.video,
            top=args.top,
            model=args.model,
            runtime=args.runtime,
            exact=args.exact,
            nprobe=args.nprobe,
        )
        if args.html:
            from distill.retrieval.page import write_page

            write_page(args.html, args.caption or f"like {args.video}", hits, infos)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print("".join(json.dumps(hit) + "\n" for hit in hits), end="")
    else:
        print("| rank | score | path | start (s) | end (s) |\n|---:|---:|---|---:|---:|")
        print(
            "".join(
                f"| {h['rank']} | {h['score']:.4f} | {h['path']} | {h['start']:.1f} | {h['end']:.1f} |\n" for h in hits
            ),
            end="",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
