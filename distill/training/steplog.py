"""The training log: a JSON line per logged step in `<name>_log.jsonl`, the trackers, and throughput."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator


class StepLog:
    """Writes log records (on the main process) and the trackers, with the training clips/s since the
    previous record: data, teacher, student and optimizer, and any save; not the time spent `paused()`.

    A run resumed at `step` first drops the lines of the steps that run again (all of them when starting over).
    """

    def __init__(self, accelerator: Accelerator, path: Path, name: str, *, step: int, batch_size: int):
        self.accelerator, self.path, self.name, self.batch_size = accelerator, path, name, batch_size
        if accelerator.is_main_process and path.is_file():
            lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] <= step]
            path.write_text("".join(f"{line}\n" for line in lines))
        self.clock = (time.perf_counter(), step)  # when the last record was written, at which step

    @contextmanager
    def paused(self) -> Iterator[None]:
        started = time.perf_counter()
        yield
        self.clock = (self.clock[0] + time.perf_counter() - started, self.clock[1])

    def write(self, step: int, record: dict[str, float]) -> None:
        now = time.perf_counter()
        record = {
            "step": step,
            **record,
            "clips_per_s": (step - self.clock[1]) * self.batch_size / (now - self.clock[0]),
        }
        self.clock = (now, step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log({f"{self.name}/{k}": v for k, v in record.items() if k != "step"}, step=step)
