"""Evaluation: Recall@K and ranks for teacher and student side by side, their cost, and the reports.

Every caption is a query over the test videos, and every video is encoded once even when several captions
share it (multi-sentence metrics then, as CLIP4Clip's MSVD evaluation). A tightTransf teacher has no
embeddings: its text and frame features are encoded once and the cross encoder scores every pair.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from distill.core.scorers import scorer_for
from distill.data.dataset import VideoTextDataset
from distill.evaluation.metrics import multi_sentence_metrics, multi_sentence_ranks, recall_curve, retrieval_metrics
from distill.evaluation.plots import plot_recall, plot_training, read_logs

METRICS = ("R1", "R5", "R10", "MdR", "MnR")


def reverse_time(video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Plays each clip `[B, T, ...]` backwards over its real frames (a prefix of `mask [B, T]`)."""
    t = torch.arange(video.shape[1], device=video.device)
    length = mask.sum(1, keepdim=True)
    order = torch.where(t < length, length - 1 - t, t)  # [B, T]
    return video[torch.arange(len(video), device=video.device)[:, None], order]


@torch.no_grad()
def encode_texts(
    model: nn.Module, dataset: VideoTextDataset, *, batch_size: int, accelerator: Accelerator
) -> dict[str, torch.Tensor]:
    """The scorer's rows for every caption (embeddings, or a cross encoder's text features), on the CPU;
    under the run's mixed precision, as `encode_videos` encodes the videos."""
    scorer, parts = scorer_for(model), {}
    for start in range(0, len(dataset), batch_size):
        ids = dataset.input_ids[start : start + batch_size].to(accelerator.device)
        mask = dataset.attention_mask[start : start + batch_size].to(accelerator.device)
        with accelerator.autocast():
            for name, rows in scorer.texts(ids, mask).items():
                parts.setdefault(name, []).append(rows.float().cpu())
    return {name: torch.cat(rows) for name, rows in parts.items()}


@torch.no_grad()
def encode_videos(
    models: dict[str, nn.Module],
    dataset: VideoTextDataset,
    first_pairs: list[int],
    *,
    batch_size: int,
    accelerator: Accelerator,
    num_workers: int = 0,
) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Per model (keyed by the view it reads), `{"video": rows, "reversed": rows}`: the scorer's rows for
    every video in the order of `first_pairs` (the first pair of each video), and for the clips played
    backwards, on the CPU of every process. One pass over the clips serves every model, so each clip is
    decoded once; `num_workers` DataLoader processes decode them."""
    loader = accelerator.prepare_data_loader(
        DataLoader(Subset(dataset, first_pairs), batch_size=batch_size, num_workers=num_workers)
    )
    parts: dict[str, dict[str, list[torch.Tensor]]] = {view: {} for view in models}
    scorers = {view: scorer_for(model) for view, model in models.items()}
    for batch in tqdm(
        loader, desc=f"encode {', '.join(models)}", unit="batch", disable=not accelerator.is_local_main_process
    ):
        for view, model in models.items():
            video, mask = batch[f"{view}_video"], batch[f"{view}_mask"]
            out = {"index": batch["index"]}
            with accelerator.autocast():
                # Frame encoders see one frame at a time, so backwards is the same features in reverse order
                # and only the temporal head runs twice (a 3D-patch teacher's features keep their forward mixing).
                frames = model.frame_features(video)
                for key, f in (("video", frames), ("reversed", reverse_time(frames, mask))):
                    for name, rows in scorers[view].videos(f, mask).items():
                        out[f"{key}/{name}"] = rows.float() if rows.is_floating_point() else rows
            # Per batch: gather_for_metrics drops the padding of the last, uneven batch only as it happens.
            for key, value in accelerator.gather_for_metrics(out).items():
                parts[view].setdefault(key, []).append(value.cpu())
    encoded = {}
    for view, lists in parts.items():
        gathered = {k: torch.cat(v) for k, v in lists.items()}
        order = gathered.pop("index").argsort()  # dataset order, whatever the sharding
        encoded[view] = {"video": {}, "reversed": {}}
        for key, value in gathered.items():
            which, name = key.split("/")
            encoded[view][which][name] = value[order]
    return encoded


@torch.no_grad()
def scores(model: nn.Module, texts: dict[str, torch.Tensor], videos: dict[str, torch.Tensor]) -> torch.Tensor:
    """Text × video score matrix `[N, V]` on the CPU, for ranks (the logit scale does not matter)."""
    return scorer_for(model).scores(texts, videos).cpu()


def retrieval(sim: torch.Tensor, video_of_text: torch.Tensor) -> dict:
    """t2v and v2t metrics; the multi-sentence form when captions share videos."""
    if len(video_of_text) == sim.shape[1] and torch.equal(video_of_text, torch.arange(sim.shape[1])):
        return {"t2v": retrieval_metrics(sim), "v2t": retrieval_metrics(sim.T)}
    return multi_sentence_metrics(sim, video_of_text)


CURVE_K = 50  # the report's Recall@K curves go up to K = 50 (or the number of test videos)


def count_gflops(fn, *args) -> float:
    """Forward GFLOPs (1 multiply-add = 2 FLOPs) of `fn(*args)`, the same for a frozen and a trainable model.

    Counted with autograd on, the math attention kernel and `nn.MultiheadAttention`'s fast path off: inside
    inference mode the counter misses fused attention, and a frozen model in eval mode takes the fast path,
    whose fused kernel the counter does not see (it counted a frozen ViT-B/32 seqTransf at 2/3 of its FLOPs).
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn(*args)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.get_total_flops() / 1e9


def parameter_parts(model: nn.Module) -> dict[str, float]:
    """Millions of parameters in each of the model's `PARTS` (distill.core.scorers.Retriever); logit scales and
    other scalars are in no part."""
    parts = dict.fromkeys(model.PARTS, 0.0)
    for name, p in model.named_parameters():
        part = next((part for part, prefixes in model.PARTS.items() if name.startswith(prefixes)), None)
        if part is not None:
            parts[part] += p.numel() / 1e6
    return parts


def efficiency(model: nn.Module, dataset: VideoTextDataset, view: str) -> dict:
    """`model_cost` on the first item of `dataset`, read as `view`."""
    item = dataset[0]
    return model_cost(
        model,
        item[f"{view}_video"][None],
        item[f"{view}_mask"][None],
        item["input_ids"][None],
        item["attention_mask"][None],
    )


def model_cost(
    model: nn.Module, video: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor, ids_mask: torch.Tensor
) -> dict:
    """Parameter counts (millions, in all and by part) and GFLOPs for one video and one caption: what the
    scorer keeps of each (a cross encoder's features only: it then runs once per caption-video pair)."""
    device = next(model.parameters()).device
    video, mask, ids, ids_mask = (t.to(device) for t in (video, mask, ids, ids_mask))
    scorer = scorer_for(model)
    video_cost = count_gflops(lambda v, m: scorer.videos(model.frame_features(v), m), video, mask)
    text_cost = count_gflops(scorer.texts, ids, ids_mask)
    return {
        "params_M": sum(p.numel() for p in model.parameters()) / 1e6,
        "params_M_parts": parameter_parts(model),
        "gflops_per_video": video_cost,
        "gflops_per_caption": text_cost,
        "frames": int(video.shape[1]),
        "resolution": int(video.shape[-1]),
    }


def evaluate(
    models: dict[str, nn.Module],
    dataset: VideoTextDataset,
    *,
    batch_size: int,
    accelerator: Accelerator,
    num_workers: int = 0,
) -> dict:
    """`{"<model>": {"t2v": {...}, "v2t": {...}, "t2v_reversed_R1": float}, "efficiency": {...}}`.

    `models` maps a view name of the dataset ("teacher", "student") to its model; `num_workers` DataLoader
    processes decode the test clips. `t2v_reversed_R1` is the
    text-to-video R@1 when every test clip plays backwards: a model that reads the order of frames loses
    most of its score there.
    """
    report: dict = {"test_pairs": len(dataset), "test_videos": len(set(dataset.video_ids)), "efficiency": {}}
    metrics = model_metrics(models, dataset, batch_size=batch_size, accelerator=accelerator, num_workers=num_workers)
    report["recall_curves"] = {name: metrics[name].pop("curve") for name in metrics}
    report.update(metrics)
    for name, model in models.items():
        report["efficiency"][name] = efficiency(model, dataset, name)
    return report


def model_metrics(
    models: dict[str, nn.Module],
    dataset: VideoTextDataset,
    *,
    batch_size: int,
    accelerator: Accelerator,
    num_workers: int = 0,
) -> dict[str, dict]:
    """Per model (keyed by the view it reads): `{"t2v": {...}, "v2t": {...}, "t2v_reversed_R1": float,
    "curve": {"t2v": [R@1, R@2, ...], "v2t": [...]}}` (the curve up to K = 50 or the number of videos)."""
    first = dataset.first_pairs()  # videos are numbered in the order of their first pairs
    column = {dataset.video_ids[pair]: c for c, pair in enumerate(first)}
    video_of_text = torch.tensor([column[v] for v in dataset.video_ids])
    encoded = encode_videos(
        models, dataset, first, batch_size=batch_size, accelerator=accelerator, num_workers=num_workers
    )
    report = {}
    for view, model in models.items():
        texts = encode_texts(model, dataset, batch_size=batch_size, accelerator=accelerator)
        sim = scores(model, texts, encoded[view]["video"])
        reversed_ = retrieval(scores(model, texts, encoded[view]["reversed"]), video_of_text)
        ranks = multi_sentence_ranks(sim, video_of_text)
        curve = {d: recall_curve(r, min(CURVE_K, sim.shape[1])) for d, r in ranks.items()}
        report[view] = {**retrieval(sim, video_of_text), "t2v_reversed_R1": reversed_["t2v"]["R1"], "curve": curve}
    return report


PART_COLUMNS = ("frame_encoder", "temporal_head", "text_tower", "token_embedding")  # of the cost table


def cost_table(report: dict, models: list[str]) -> list[str]:
    """The Markdown rows of the report's cost of `models`: parameters (in all and by part), GFLOPs, frames and
    resolution, and the teacher-to-student ratios when both are there."""
    lines = [
        "| model | params (M) | frame encoder | temporal head | text tower | token embedding | GFLOPs / video "
        "| GFLOPs / caption | frames | resolution |",
        "|---|" + "---:|" * 9,
    ]
    for m in models:
        e = report["efficiency"][m]
        parts = " | ".join(f"{e['params_M_parts'][part]:.2f}" for part in PART_COLUMNS)
        lines.append(
            f"| {m} | {e['params_M']:.2f} | {parts} | {e['gflops_per_video']:.3f} | {e['gflops_per_caption']:.3f} "
            f"| {e['frames']} | {e['resolution']} |"
        )
    if {"teacher", "student"} <= set(models):
        t, s = report["efficiency"]["teacher"], report["efficiency"]["student"]
        keys = [("params_M",), *(("params_M_parts", part) for part in PART_COLUMNS), ("gflops_per_video",)]
        keys.append(("gflops_per_caption",))
        ratios = [_ratio(t, s, key) for key in keys]
        lines.append(f"| teacher / student | {' | '.join(ratios)} | | |")
    return lines


def _ratio(teacher: dict, student: dict, key: tuple[str, ...]) -> str:
    for name in key:
        teacher, student = teacher[name], student[name]
    return f"{teacher / student:.1f}x" if student else "-"


def kept_validation(logs: dict[str, list[dict]], schedules: dict[str, dict]) -> dict[str, dict[str, float]]:
    """The validation R@1 of the weights each training stage kept: its best epoch's where the schedule kept
    the best (`report["schedule"]`), else its last validated epoch's: `{stage: {"val_student_t2v_R1": ...}}`."""
    kept = {}
    for stage, records in logs.items():
        validated = [r for r in records if any(key.startswith("val_") for key in r)]
        schedule = schedules.get(stage, {})
        if schedule.get("exported") == "best":
            validated = [r for r in validated if r.get("step") == schedule["best_step"]] or validated
        if validated:
            kept[stage] = {key: value for key, value in validated[-1].items() if key.startswith("val_")}
    return kept


def validation_table(last: dict[str, dict[str, float]], validation: dict, test_gallery: int) -> list[str]:
    """The Markdown lines of the validation R@1 of the weights each training stage kept, with its gallery."""
    videos = validation["videos"]
    lines = [
        "",
        f"## Validation (the kept epoch, gallery of {videos})",
        "",
        "R@1 on the validation split, at the end of the epoch whose weights each training stage kept: "
        f"{validation['pairs']} captions of {videos} videos (chance R@1 {100 / videos:.2g}%), held out of training. "
        f"The test gallery above holds {test_gallery} videos: R@1 falls as the gallery grows, so compare within "
        "one gallery.",
        "",
        "| stage | model | t2v R@1 | v2t R@1 |",
        "|---|---|---:|---:|",
    ]
    for stage, values in last.items():
        for model in ("teacher", "student"):
            if f"val_{model}_t2v_R1" in values:
                t2v, v2t = values[f"val_{model}_t2v_R1"], values[f"val_{model}_v2t_R1"]
                lines.append(f"| {stage} | {model} | {t2v:.1f} | {v2t:.1f} |")
    return lines


STOPS = {"patience": "validation stalled for `patience` epochs", "maximum": "it reached the maximum"}


def schedule_lines(schedules: dict[str, dict]) -> list[str]:
    """A line per training stage (`report["schedule"]`, `distill.training.schedule`): how long it trained,
    why it stopped, its best validation epoch and which weights it kept."""
    lines = []
    for stage, s in schedules.items():
        kept = "its weights are the ones evaluated" if s["exported"] == "best" else "the last step's weights are kept"
        lines.append(
            f"- {stage} ({s['rule']}): trained {s['steps']} of at most {s['max_steps']} steps ({s['epochs']} epochs), "
            f"stopped because {STOPS[s['stopped']]}; best validation R@1 (mean of t2v and v2t) "
            f"{s['val_R1']:.1f} at epoch {s['best_epoch']} (step {s['best_step']}): {kept}."
        )
    return lines


def write_reports(report: dict, run_dir: Path) -> None:
    """`report.json` and a readable `report.md` in the run folder. Every R@K in it says its gallery: R@K falls as
    the gallery grows, so validation and test R@1 over galleries of different sizes are not a gap."""
    (run_dir / "report.json").write_text(json.dumps(report, indent=2))
    models = [m for m in ("teacher", "student") if m in report]
    gallery = report["test_videos"]
    lines = [
        f"# Evaluation: {report.get('name', run_dir.name)}",
        "",
        f"Test split: {report['test_pairs']} captions of {gallery} videos, a gallery of {gallery} (chance R@1 "
        f"{100 / gallery:.2g}%). R@K in percent; MdR and MnR are the median and mean rank of the true match "
        "(1 is best).",
        "",
    ]
    for direction, title in (("t2v", "Text to video"), ("v2t", "Video to text")):
        lines += [f"## {title} (test, gallery of {gallery})", ""]
        lines += ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---:|" * len(METRICS)]
        for m in models:
            lines.append(f"| {m} | " + " | ".join(f"{report[m][direction][k]:.1f}" for k in METRICS) + " |")
        lines.append("")
    if len(models) == 2:
        kept = 100 * report["student"]["t2v"]["R1"] / max(report["teacher"]["t2v"]["R1"], 1e-9)
        lines += [f"Student keeps {kept:.1f}% of the teacher's text-to-video R@1.", ""]
    lines += ["## Order of frames", "", "Text-to-video R@1 with every test clip played backwards:", ""]
    lines += [f"- {m}: {report[m]['t2v_reversed_R1']:.1f} (forwards {report[m]['t2v']['R1']:.1f})" for m in models]
    logs = read_logs(run_dir)
    if "validation" in report and (last := kept_validation(logs, report.get("schedule", {}))):
        lines += validation_table(last, report["validation"], gallery)
    lines += ["", "## Cost", "", *cost_table(report, models)]
    if "schedule" in report:
        lines += ["", "## Training schedule", "", *schedule_lines(report["schedule"])]
    figures = [plot_recall(report["recall_curves"], run_dir / "recall_at_k.png", gallery=gallery)]
    if logs:
        figures.append(plot_training(logs, run_dir / "training_curves.png", report.get("schedule", {})))
    lines += ["", "## Figures", ""] + [f"![{path.stem.replace('_', ' ')}]({path.name})" for path in figures]
    (run_dir / "report.md").write_text("\n".join(lines) + "\n")
