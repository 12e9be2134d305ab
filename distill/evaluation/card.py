"""The model card folder the export stage writes beside `student.safetensors`: a folder a user can upload to
a model hub as it is, and that `load_student` reads.

    model.safetensors   the exported student (the same file)
    config.json         the student's spec and preprocessing (also in the weights' metadata)
    README.md           a model card: front-matter (library, tags, datasets, and a model-index of the student's
                        own test metrics, both directions, which a hub shows as this model's results) and
                        the results table of student and teacher side by side, and the cost table
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from distill.core.files import atomic_dir
from distill.evaluation.evaluate import cost_table

METRICS = (("R1", "recall@1"), ("R5", "recall@5"), ("R10", "recall@10"), ("MdR", "median_rank"), ("MnR", "mean_rank"))
DIRECTIONS = {"t2v": "Text-to-video retrieval", "v2t": "Video-to-text retrieval"}


def front_matter(name: str, dataset: str, report: dict | None) -> dict:
    """The card's YAML header; `model-index` holds the student's test metrics only: a hub reads every result
    there as this model's own, so the teacher's go in the card's table."""
    header = {
        "library_name": "clip4clip-distill",
        "tags": ["video-text-retrieval", "knowledge-distillation", "clip4clip", "timm"],
        "datasets": [dataset],
    }
    if report is None:
        return header
    results = []
    for direction, task in DIRECTIONS.items():
        metrics = [
            {"type": kind, "name": f"{direction} {key}", "value": round(report["student"][direction][key], 2)}
            for key, kind in METRICS
        ]
        results.append(
            {
                "task": {"type": "video-text-retrieval", "name": task},
                "dataset": {"name": dataset, "type": dataset, "split": "test"},
                "metrics": metrics,
            }
        )
    header["model-index"] = [{"name": name, "results": results}]
    return header


def card_text(name: str, dataset: str, report: dict | None, preprocessing: dict) -> str:
    lines = [
        "---",
        yaml.safe_dump(front_matter(name, dataset, report), sort_keys=False).rstrip(),
        "---",
        "",
        f"# {name}",
        "",
        "A text-to-video retrieval student distilled from a CLIP4Clip teacher with clip4clip-distill: it "
        "embeds videos and captions in one space.",
        "",
        "```python",
        "from students import load_student",
        "from distill.embed import embed_texts, embed_videos",
        "",
        'student = load_student("THIS_FOLDER")',
        'scores = embed_texts(student, ["a caption"]) @ embed_videos(student, ["a.mp4"]).embeddings.T',
        "```",
        "",
        f"Reads {preprocessing.get('max_frames')} frames of {preprocessing.get('image_size')} px (CLIP4Clip "
        f"sampling at {preprocessing.get('framerate')} fps, CLIP normalisation) and captions of "
        f"{preprocessing.get('max_words')} tokens (CLIP BPE).",
        "",
    ]
    if report is not None:
        lines += [
            f"## Results ({dataset}, test split: {report['test_pairs']} captions of {report['test_videos']} videos)",
            "",
            f"The gallery holds {report['test_videos']} videos (chance R@1 {100 / report['test_videos']:.2g}%). The "
            "teacher, the model this student was distilled from, is shown for comparison; the card's metadata "
            "lists the student's results only.",
            "",
            "| model | direction | R@1 | R@5 | R@10 | MdR | MnR |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for model in ("student", "teacher"):
            for direction in DIRECTIONS:
                row = report[model][direction]
                lines.append(f"| {model} | {direction} | " + " | ".join(f"{row[k]:.1f}" for k, _ in METRICS) + " |")
        lines += ["", "## Cost", "", *cost_table(report, ["student", "teacher"])]
        lines.append("")
    return "\n".join(lines)


def write_model_card(
    export: Path, folder: Path, *, name: str, dataset: str, spec: dict, preprocessing: dict, report: dict | None
) -> Path:
    """Writes the card folder for the student exported at `export` (swapped in whole: a kill leaves none)."""
    with atomic_dir(folder) as partial:
        shutil.copyfile(export, partial / "model.safetensors")
        config = {"spec": spec, "preprocessing": preprocessing}
        (partial / "config.json").write_text(json.dumps(config, indent=1))
        (partial / "README.md").write_text(card_text(name, dataset, report, preprocessing))
    return folder
