"""Compatible embeddings: teacher queries against videos a `student.text=teacher` student embedded.

    python benchmarks/bench_spaces.py [--run runs/bench_spaces] [--split test|val]

Trains the demo recipe with `student.text=teacher` (the student ships the teacher's text tower, frozen, so its
video tower learns the teacher's space; embed_dim 128, no token_rank) through the CLI into `--run`, unless
that folder already holds its export; then embeds the split's clips and captions with both models (each with
its own sampling, `distill.retrieval.encoders.load_encoder`) and prints t2v and v2t R@1/5/10 and MdR of:
    teacher   teacher captions, teacher videos (the reference)
    student   student captions (the teacher's tower at the export's float16), student videos
    cross     teacher captions against student videos, and student captions against teacher videos
    mixed     teacher captions against a gallery whose videos alternate: odd ones by the student, even
              ones by the teacher (what `distill.retrieval.search --also` searches)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["student.text=teacher", "student.token_rank=0", "student.embed_dim=128"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "bench_spaces")
    parser.add_argument("--split", choices=["test", "val"], default="test")
    args = parser.parse_args()

    import torch

    from distill.data.checks import read_split_or_stop
    from distill.data.splits import hold_out
    from distill.evaluation.metrics import retrieval_metrics_from_embeddings
    from distill.recipe import load_recipe
    from distill.retrieval.embed import embed_texts, embed_videos
    from distill.retrieval.encoders import load_encoder

    if not (args.run / "student.safetensors").is_file():
        command = [sys.executable, str(REPO / "distill" / "run.py"), str(REPO / "recipes" / "demo.yaml")]
        subprocess.run([*command, f"output_dir={args.run}", *OVERRIDES], check=True, cwd=REPO)
    recipe = load_recipe(args.run / "recipe.yaml")
    val = hold_out(read_split_or_stop(recipe.data, "train").pairs, recipe.data.val_fraction)[1]
    pairs = val if args.split == "val" else read_split_or_stop(recipe.data, "test").pairs
    videos, captions = [p.video for p in pairs], [p.caption for p in pairs]
    embedded = {}
    for name in ("teacher", "student"):
        encoder, record = load_encoder(str(args.run / f"{name}.safetensors"))
        found = embed_videos(encoder, videos, batch_size=32)
        assert not found.failed, found.failed
        embedded[name] = {"text": embed_texts(encoder, captions), "video": found.embeddings, "space": record["space"]}
    assert embedded["teacher"]["space"] == embedded["student"]["space"], "the student is not in the teacher's space"
    t, s = embedded["teacher"], embedded["student"]
    odd = torch.arange(len(videos)) % 2 == 1
    mixed = torch.where(odd[:, None], s["video"], t["video"])
    rows = {
        "teacher": (t["text"], t["video"]),
        "student": (s["text"], s["video"]),
        "cross: teacher captions, student videos": (t["text"], s["video"]),
        "cross: student captions, teacher videos": (s["text"], t["video"]),
        "mixed gallery, teacher captions": (t["text"], mixed),
    }
    print(
        f"demo recipe with {' '.join(OVERRIDES)}; {args.split} split, {len(videos)} clips, one caption each; "
        f"space {t['space'][:20]}...\n"
    )
    print("| queries and gallery | t2v R@1 | R@5 | R@10 | MdR | v2t R@1 | R@5 | R@10 | MdR |\n|---|" + "---:|" * 8)
    for name, (text, video) in rows.items():
        m = retrieval_metrics_from_embeddings(text, video)
        cells = " | ".join(
            f"{m[d]['R1']:.1f} | {m[d]['R5']:.1f} | {m[d]['R10']:.1f} | {m[d]['MdR']:.1f}" for d in ("t2v", "v2t")
        )
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
