"""Evaluation: Recall@K and ranks for teacher and student side by side, their cost, and the reports."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from distill.metrics import retrieval_metrics_from_embeddings

METRICS = ("R1", "R5", "R10", "MdR", "MnR")


@torch.no_grad()
def encode(model: nn.Module, dataset: Dataset, *, view: str, batch_size: int, accelerator: Accelerator,
           reverse_time: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Text and video embeddings `[N, D]` for every pair, in dataset order, on every process.

    `reverse_time` plays each clip backwards (real frames only), to measure how much the model relies
    on the order of frames.
    """
    loader = accelerator.prepare_data_loader(DataLoader(dataset, batch_size=batch_size))
    texts, videos, indices = [], [], []
    for batch in tqdm(loader, desc=f"encode {view}", unit="batch", disable=not accelerator.is_local_main_process):
        video, mask = batch[f"{view}_video"], batch[f"{view}_mask"]
        if reverse_time:
            video = torch.stack([v[torch.cat([m.nonzero()[:, 0].flip(0), (m == 0).nonzero()[:, 0]])]
                                 for v, m in zip(video, mask)])
        with accelerator.autocast():
            text = model.encode_text(batch["input_ids"], batch["attention_mask"])
            vid = model.encode_video(video, mask)
        t, v, i = accelerator.gather_for_metrics((text.float(), vid.float(), batch["index"]))
        texts.append(t.cpu()), videos.append(v.cpu()), indices.append(i.cpu())
    order = torch.cat(indices).argsort()
    return torch.cat(texts)[order], torch.cat(videos)[order]


def count_gflops(fn, *args) -> float:
    """Forward GFLOPs (1 multiply-add = 2 FLOPs) of `fn(*args)`.

    Counted with autograd on and the math attention kernel: inside inference mode the counter misses
    fused attention.
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def efficiency(model: nn.Module, dataset: Dataset, view: str) -> dict[str, float]:
    """Parameter counts (millions) and GFLOPs for one video and one caption."""
    item = dataset[0]
    device = next(model.parameters()).device
    video = item[f"{view}_video"][None].to(device)
    mask = item[f"{view}_mask"][None].to(device)
    ids = item["input_ids"][None].to(device)
    return {
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops_per_video": count_gflops(model.encode_video, video, mask),
        "gflops_per_caption": count_gflops(model.encode_text, ids, item["attention_mask"][None].to(device)),
        "frames": int(video.shape[1]),
        "resolution": int(video.shape[-1]),
    }


def evaluate(models: dict[str, nn.Module], dataset: Dataset, *, batch_size: int,
             accelerator: Accelerator) -> dict:
    """`{"<model>": {"t2v": {...}, "v2t": {...}, "t2v_reversed_R1": float}, "efficiency": {...}}`.

    `t2v_reversed_R1` is the text-to-video R@1 when every test clip plays backwards: a model that reads the
    order of frames loses most of its score there.
    """
    report: dict = {"efficiency": {}}
    for name, model in models.items():
        text, video = encode(model, dataset, view=name, batch_size=batch_size, accelerator=accelerator)
        report[name] = retrieval_metrics_from_embeddings(text, video)
        _, reversed_video = encode(model, dataset, view=name, batch_size=batch_size, accelerator=accelerator,
                                   reverse_time=True)
        report[name]["t2v_reversed_R1"] = retrieval_metrics_from_embeddings(text, reversed_video)["t2v"]["R1"]
        report["efficiency"][name] = efficiency(model, dataset, name)
    return report


def write_reports(report: dict, run_dir: Path) -> None:
    """`report.json` and a readable `report.md` in the run folder."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    models = [m for m in ("teacher", "student") if m in report]
    lines = [f"# Evaluation: {report.get('name', run_dir.name)}", "",
             f"Test split: {report.get('test_pairs', '?')} caption-video pairs. R@K in percent; MdR and MnR "
             "are ranks (1 is best).", ""]
    for direction, title in (("t2v", "Text to video"), ("v2t", "Video to text")):
        lines += [f"## {title}", "", "| model | " + " | ".join(METRICS) + " |",
                  "|---|" + "---:|" * len(METRICS)]
        for m in models:
            lines.append(f"| {m} | " + " | ".join(f"{report[m][direction][k]:.1f}" for k in METRICS) + " |")
        lines.append("")
    if len(models) == 2:
        kept = 100 * report["student"]["t2v"]["R1"] / max(report["teacher"]["t2v"]["R1"], 1e-9)
        lines += [f"Student keeps {kept:.1f}% of the teacher's text-to-video R@1.", ""]
    lines += ["## Order of frames", "", "Text-to-video R@1 with every test clip played backwards:", ""]
    lines += [f"- {m}: {report[m]['t2v_reversed_R1']:.1f} (forwards {report[m]['t2v']['R1']:.1f})" for m in models]
    lines += ["", "## Cost", "", "| model | params (M) | GFLOPs / video | GFLOPs / caption | frames | resolution |",
              "|---|---:|---:|---:|---:|---:|"]
    for m in models:
        e = report["efficiency"][m]
        lines.append(f"| {m} | {e['params_M']:.2f} | {e['gflops_per_video']:.3f} | {e['gflops_per_caption']:.3f} "
                     f"| {e['frames']} | {e['resolution']} |")
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
