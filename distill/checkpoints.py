"""Resumable training state: `checkpoint_<step>` folders of accelerate's `save_state` (models, optimizer,
the prepared LR scheduler, random states), the step in the folder's name.

A folder is written as `partial_<step>` and renamed, so a kill during a save never leaves a newest
checkpoint that cannot be loaded (accelerate's own checkpoint naming writes in place).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from accelerate import Accelerator


def newest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    return found[-1] if found else None


def save_checkpoint(accelerator: Accelerator, folder: Path, step: int) -> Path:
    """Saves the training state after `step` optimizer steps to `folder/checkpoint_<step>`."""
    final, partial = folder / f"checkpoint_{step}", folder / f"partial_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # what a save killed half-way left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def resume(accelerator: Accelerator, folder: Path) -> tuple[int, Path | None]:
    """Loads the newest checkpoint in `folder`, if any: `(its step, its path)`, else `(0, None)`."""
    latest = newest_checkpoint(folder)
    if latest is None:
        return 0, None
    accelerator.load_state(str(latest))
    return int(latest.name.split("_")[1]), latest
