"""A student's int8 ONNX encoders against its fp32 ONNX ones and PyTorch: file sizes, the gates' R@K, latency.

    python -m students.onnx STUDENT ONNX_DIR --int8 --data LIST [--val-fraction F]
    python benchmarks/bench_int8.py STUDENT ONNX_DIR [--rounds 20]

Sizes: the student's export (safetensors, fp16 as training exports it), the fp32 ONNX files, the int8 ones
(ONNX_DIR/int8). R@K: what the int8 folder's gates measured on the validation clips when it was written (its
model.json). Latency: the p50 of `--rounds` runs (after a warm-up) of each encoder on random inputs of the
student's shapes at batch 1 and 16, on one thread and on all the machine's, PyTorch, fp32 and int8
onnxruntime alternating within each round. The CPU's int8 instructions (VNNI, AMX) are printed with the
timings: without them int8 kernels can be slower than float ones.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = ("avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16", "amx_tile")


def cpu() -> str:
    """The CPU's model name and which int8 / AMX instruction sets /proc/cpuinfo lists."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    found = ", ".join(f"{flag} {'yes' if flag in flags else 'no'}" for flag in FLAGS)
    return f"{name}, {os.cpu_count()} cores; {found}"


def files_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*_encoder.onnx*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("student", type=Path, help="the student export (.safetensors)")
    parser.add_argument("onnx", type=Path, help="its ONNX folder, with the int8 folder in it (ONNX_DIR/int8)")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()

    import onnxruntime
    import torch
    from safetensors import safe_open

    from students import export_file, load_student
    from students.onnx import example_inputs

    int8 = args.onnx / "int8"
    record = json.loads((int8 / "model.json").read_text())
    model = load_student(export_file(args.student))
    fp32_bytes, int8_bytes = files_size(args.onnx), files_size(int8)
    print(f"{cpu()}\ntorch {torch.__version__}, onnxruntime {onnxruntime.__version__}; p50 of {args.rounds} rounds\n")
    print(f"quantisation: {json.dumps(record['quantization']['methods'])}\n")
    export = export_file(args.student)
    with safe_open(str(export), framework="pt") as f:
        dtype = str(f.get_slice(next(iter(f.keys()))).get_dtype()).lower()
    print("| files | MB | vs ONNX fp32 |\n|---|---:|---:|")
    for name, size in (
        (f"safetensors export ({dtype})", export.stat().st_size),
        ("ONNX fp32", fp32_bytes),
        ("ONNX int8", int8_bytes),
    ):
        print(f"| {name} | {size / 1e6:.2f} | {size / fp32_bytes:.2f}x |")

    gates = record["gates"]
    cosine = ", ".join(f"{k} mean {v['mean']:.4f}, p1 {v['p1']:.4f}" for k, v in gates["cosine"].items())
    print(f"\nR@K on {gates['pairs']} validation pairs ({gates['data']}); cosine int8 to fp32: {cosine}\n")
    print("| encoders | t2v R1 | t2v R5 | t2v R10 | v2t R1 | v2t R5 | v2t R10 |\n|---|---:|---:|---:|---:|---:|---:|")
    for side, recall in gates["recall"].items():
        cells = " | ".join(f"{recall[d][k]:.1f}" for d in ("t2v", "v2t") for k in ("R1", "R5", "R10"))
        print(f"| {side} | {cells} |")

    reference = {"video": model.encode_video, "text": model.encode_text}
    print("\n| encoder | batch | threads | PyTorch ms | ONNX fp32 ms | ONNX int8 ms | int8 vs fp32 | int8 vs PyTorch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for threads in (1, os.cpu_count()):
        torch.set_num_threads(threads)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        sessions = {
            precision: {
                name: onnxruntime.InferenceSession(
                    str(folder / f"{name}_encoder.onnx"), options, providers=["CPUExecutionProvider"]
                )
                for name in ("video", "text")
            }
            for precision, folder in (("fp32", args.onnx), ("int8", int8))
        }
        for batch in (1, 16):
            inputs = example_inputs(model, batch)
            for name in ("video", "text"):
                feed = {k: v.numpy() for k, v in inputs[name].items()}
                runs = {
                    "pytorch": lambda: reference[name](*inputs[name].values()),
                    "fp32": lambda: sessions["fp32"][name].run(None, feed),
                    "int8": lambda: sessions["int8"][name].run(None, feed),
                }
                times = {k: [] for k in runs}
                with torch.inference_mode():
                    for round_ in range(args.rounds + 1):  # round 0 warms up
                        for runtime, run in runs.items():
                            start = time.perf_counter()
                            run()
                            if round_:
                                times[runtime].append(time.perf_counter() - start)
                p50 = {k: 1e3 * statistics.median(v) for k, v in times.items()}
                print(
                    f"| {name} | {batch} | {threads} | {p50['pytorch']:.2f} | {p50['fp32']:.2f} | {p50['int8']:.2f} "
                    f"| {p50['fp32'] / p50['int8']:.2f}x | {p50['pytorch'] / p50['int8']:.2f}x |"
                )


if __name__ == "__main__":
    main()
