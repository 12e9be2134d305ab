"""Times the demo recipe stage by stage and reports its peak memory.

    python benchmarks/bench_demo.py [dotted.key=value ...]

Runs `distill/run.py recipes/demo.yaml` in a child process (a fresh data root and run folder under a temp
directory, so the synthetic data is generated too), reads the stage boundaries from its output, and
prints a table. Targets (issue 2): the whole demo within 10 minutes on a 2-core CPU, peak memory < 4 GB.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pinned import MALLOC  # benchmarks/pinned.py

REPO = Path(__file__).resolve().parents[1]
# The line each stage prints when it ends.
MARKERS = {
    r"data: \d+ test pairs": "data (generate, check, index)",
    "teacher: trained": "teacher (train)",
    r"cache: teacher outputs for": "cache (teacher once over the train clips)",
    "distill: student trained": "distill",
    "evaluate: text-to-video": "evaluate",
    "export: student saved": "export",
}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            str(REPO / "distill" / "run.py"),
            str(REPO / "recipes" / "demo.yaml"),
            f"data.root={tmp}/data",
            f"output_dir={tmp}/run",
            *sys.argv[1:],
        ]
        # glibc hands large buffers back to the system and page-faults them in again every step; pin it.
        env = {**os.environ, **MALLOC}
        start = time.perf_counter()
        marks = []
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env) as p:
            for line in p.stdout:
                for marker, label in MARKERS.items():
                    if re.match(marker, line) and label not in [m[0] for m in marks]:
                        marks.append((label, time.perf_counter() - start))
        if p.returncode:
            sys.exit(f"demo failed with exit code {p.returncode}")
        total = time.perf_counter() - start
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2
        report = json.loads((Path(tmp) / "run" / "report.json").read_text())
        report_md = (Path(tmp) / "run" / "report.md").read_text()

    print("| stage | ends at (s) | takes (s) |\n|---|---:|---:|")
    previous = 0.0
    for label, at in marks:
        print(f"| {label} | {at:.0f} | {at - previous:.0f} |")
        previous = at
    print(f"| total | {total:.0f} | |\n")
    print(f"peak resident memory: {peak_gb:.2f} GB")
    t, s = report["teacher"]["t2v"]["R1"], report["student"]["t2v"]["R1"]
    print(f"t2v R@1: teacher {t:.1f}, student {s:.1f} ({100 * s / t:.1f}% of the teacher)\n")
    print(report_md)


if __name__ == "__main__":
    main()
