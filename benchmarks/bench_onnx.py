"""A recipe's student and teacher in onnxruntime against PyTorch on the CPU: parity and videos/s, captions/s.

    python benchmarks/bench_onnx.py [--rounds 5] [--recipe demo|msrvtt] [dotted.key=value ...]

The student and teacher of the recipe (`bench_cost.recipe_models`: random weights, as speed does not depend
on them) are exported with `students.onnx.export_onnx`; both runtimes then encode the same random inputs at
batch 1 and 16, eval mode, float32, the machine's threads, alternating; medians of
`--rounds` rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipe", choices=["demo", "msrvtt"], default="demo")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for the recipe")
    args = parser.parse_args()

    import onnxruntime
    import torch
    from bench_cost import recipe_models

    from students.onnx import example_inputs, export_onnx

    recipe, models = recipe_models(REPO / "recipes" / f"{args.recipe}.yaml", args.overrides)
    batches = (1, 16)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model_name, model in models.items():
            paths = export_onnx(model, Path(tmp) / model_name)
            sessions = {
                name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
                for name, path in paths.items()
            }
            reference = {"video": model.encode_video, "text": model.encode_text}
            for batch in batches:
                inputs = example_inputs(model, batch)
                for name in ("video", "text"):
                    feed = {k: v.numpy() for k, v in inputs[name].items()}
                    times = {"pytorch": [], "onnxruntime": []}
                    with torch.inference_mode():
                        for round_ in range(args.rounds + 1):  # round 0 warms up
                            for runtime in times:
                                start = time.perf_counter()
                                if runtime == "pytorch":
                                    want = reference[name](*inputs[name].values())
                                else:
                                    got = sessions[name].run(None, feed)[0]
                                if round_:
                                    times[runtime].append(time.perf_counter() - start)
                    rate = {k: batch / statistics.median(v) for k, v in times.items()}
                    difference = float(abs(got - want.numpy()).max())
                    rows.append((model_name, name, batch, rate["pytorch"], rate["onnxruntime"], difference))

    s, t = recipe.student, models["teacher"]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {args.recipe}: student {s.backbone}, "
        f"{s.max_frames} frames at {s.image_size} px; teacher {t.sim_header}, {t.preprocessing.max_frames} frames at "
        f"{t.input_size} px; {recipe.data.max_words} tokens; medians of {args.rounds} rounds\n"
    )
    print(
        "| model | encoder | batch | PyTorch items/s | onnxruntime items/s | onnxruntime / PyTorch "
        "| max abs difference |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for model_name, name, batch, torch_rate, ort_rate, difference in rows:
        item = "videos" if name == "video" else "captions"
        print(
            f"| {model_name} | {name} ({item}) | {batch} | {torch_rate:.1f} | {ort_rate:.1f} | "
            f"{ort_rate / torch_rate:.2f}x | {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
