"""Command line: search an index (`distill.index`) by caption or by video.

    python -m distill.search INDEX_DIR "a small red circle moves left" --top 5
    python -m distill.search INDEX_DIR --video some/clip.mp4 --top 5 --json

Prints a table of the best entries (rank, score, path) or, with `--json`, one JSON object a line, best
first. The query is embedded by the model the index was built with, found at the path it records and
checked against its sha256, so a query never lands in another model's embedding space. The search is
exact, in chunks of the gallery, so memory stays bounded however large the index.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from distill.embed import embed_texts, embed_videos
from distill.index import IndexFolderError, load_model, read_index

CHUNK = 65_536  # gallery rows scored at once: 65k x 512 float32 is 128 MB


def top_k(query: torch.Tensor, gallery: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` best `(scores, rows)` of `query [D] @ gallery [N, D].T`, best first, chunk by chunk."""
    best_scores, best_rows = torch.empty(0), torch.empty(0, dtype=torch.long)
    for start in range(0, len(gallery), CHUNK):
        scores = gallery[start : start + CHUNK].float() @ query
        scores, rows = scores.topk(min(k, len(scores)))
        best_scores, order = torch.cat([best_scores, scores]).topk(min(k, len(best_scores) + len(scores)))
        best_rows = torch.cat([best_rows, rows + start])[order]
    return best_scores, best_rows


def search(folder: Path, *, caption: str | None = None, video: Path | None = None, top: int = 5) -> list[dict]:
    """The `top` entries of the index nearest to a caption or to a video: `{"rank", "score", "path"}`."""
    info, entries, embeddings = read_index(folder)
    model, record = load_model(info["model"]["source"])
    if record["sha256"] != info["model"]["sha256"]:
        raise IndexFolderError(
            f"{folder} was built with {info['model']['source']} at sha256 {info['model']['sha256'][:12]}, but the "
            f"file there now has sha256 {record['sha256'][:12]}: its embeddings are in another space; rebuild "
            "the index"
        )
    if video is not None:
        found = embed_videos(model, [str(video)])
        if found.failed:
            raise IndexFolderError(f"query video: {found.failed[str(video)]}")
        query = found.embeddings[0]
    else:
        query = embed_texts(model, [caption])[0]
    scores, rows = top_k(query, embeddings, top)
    return [
        {"rank": i + 1, "score": round(s, 4), "path": entries[r]["path"]}
        for i, (s, r) in enumerate(zip(scores.tolist(), rows.tolist()))
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path, help="an index folder written by python -m distill.index")
    parser.add_argument("caption", nargs="?", help="what to look for, in words")
    parser.add_argument("--video", type=Path, help="a video to find the nearest entries of, instead of a caption")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="one JSON object a line, best first")
    args = parser.parse_args(argv)
    if (args.caption is None) == (args.video is None):
        parser.error("give a caption or --video PATH (one of them)")
    try:
        hits = search(args.index, caption=args.caption, video=args.video, top=args.top)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print("".join(json.dumps(hit) + "\n" for hit in hits), end="")
    else:
        print("| rank | score | path |\n|---:|---:|---|")
        print("".join(f"| {h['rank']} | {h['score']:.4f} | {h['path']} |\n" for h in hits), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
