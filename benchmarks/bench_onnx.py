"""The student's encoders in onnxruntime against PyTorch on the CPU: parity and videos/s, captions/s.

    python benchmarks/bench_onnx.py [--rounds 5] [--recipe demo|msrvtt] [dotted.key=value ...]

The student of the recipe (random weights: speed does not depend on them) is exported with
`students.onnx.export_onnx`; both runtimes then encode the same random inputs at batch 1 and 16 (msrvtt:
1 and 4), eval mode, float32, the machine's threads, alternating; medians of `--rounds` rounds.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--recipe", choices=["demo", "msrvtt"], default="demo")
    parser.add_argument("overrides", nargs="*", help="dotted.key=value for the recipe's student")
    args = parser.parse_args()

    import onnxruntime
    import torch

    from distill.recipe import load_recipe
    from students import Student
    from students.onnx import example_inputs, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        stand_ins = []
        if args.recipe == "msrvtt":  # paths the recipe checks for, never read here
            for name in ("checkpoint", "MSRVTT_train.9k.csv", "MSRVTT_data.json", "MSRVTT_JSFUSION_test.csv"):
                (Path(tmp) / name).touch()
            stand_ins = [f"data.annotations={tmp}", f"data.video_root={tmp}", f"teacher.source={tmp}/checkpoint"]
        recipe = load_recipe(REPO / "recipes" / f"{args.recipe}.yaml", [*stand_ins, *args.overrides])
        torch.manual_seed(0)
        student = Student(recipe.student, max_words=recipe.data.max_words).eval()
        paths = export_onnx(student, Path(tmp) / "onnx")
        sessions = {
            name: onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, path in paths.items()
        }
        batches = (1, 16) if args.recipe == "demo" else (1, 4)
        rows = []
        for batch in batches:
            inputs = example_inputs(student, batch)
            reference = {"video": student.encode_video, "text": student.encode_text}
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
                rows.append((name, batch, rate["pytorch"], rate["onnxruntime"], float(abs(got - want.numpy()).max())))

    s = recipe.student
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; {args.recipe} student: {s.backbone}, "
        f"{s.max_frames} frames at {s.image_size} px, {recipe.data.max_words} tokens; medians of {args.rounds} rounds\n"
    )
    print("| encoder | batch | PyTorch items/s | onnxruntime items/s | onnxruntime / PyTorch | max abs difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, batch, torch_rate, ort_rate, difference in rows:
        item = "videos" if name == "video" else "captions"
        print(
            f"| {name} ({item}) | {batch} | {torch_rate:.1f} | {ort_rate:.1f} | {ort_rate / torch_rate:.2f}x "
            f"| {difference:.1e} |"
        )


if __name__ == "__main__":
    main()
