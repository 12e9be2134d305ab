"""Resumable training state: `checkpoint_<step>` folders of accelerate's `save_state` (models, optimizer,
the prepared LR scheduler, random states), the step in the folder's name.

A folder is written as `partial_<step>` and renamed, so a kill during a save never leaves a newest
checkpoint that cannot be loaded (accelerate's own checkpoint naming writes in place). Each folder also
keeps `settings.json`, what its stage trains with (`distill.stages.checkpoint_settings`): a resume with
other values would silently continue another run, so it stops naming them; and the stopping rule's state
with the best weights so far (`distill.training.schedule`), so a resume stops where the whole run would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

from distill.training.schedule import Schedule


def newest_checkpoint(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint_*"), key=lambda p: int(p.name.split("_")[1]))
    return found[-1] if found else None


def save_checkpoint(
    accelerator: Accelerator,
    folder: Path,
    step: int,
    settings: dict | None = None,
    schedule: Schedule | None = None,
) -> Path:
    """Saves the training state after `step` optimizer steps, `settings` and the `schedule`'s rule state to
    `folder/checkpoint_<step>`."""
    final, partial = folder / f"checkpoint_{step}", folder / f"partial_{step}"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)  # what a save killed half-way left
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()  # every process has written its random states before the rename
    if accelerator.is_main_process:
        if settings is not None:
            (partial / "settings.json").write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        if schedule is not None:
            schedule.save(partial)
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    accelerator.wait_for_everyone()
    return final


def resume(
    accelerator: Accelerator, folder: Path, settings: dict | None = None, schedule: Schedule | None = None
) -> tuple[int, Path | None]:
    """Loads the newest checkpoint in `folder`, if any, and its rule state into `schedule`: `(its step, its
    path)`, else `(0, None)`. Stops if it
    was saved with other `settings`; a key only one side has (a recipe field added since) is not compared,
    and a checkpoint without settings.json (saved before they were kept) is taken as it is."""
    latest = newest_checkpoint(folder)
    if latest is None:
        return 0, None
    saved = latest / "settings.json"
    if settings is not None and saved.is_file():
        found = json.loads(saved.read_text())
        if differ := [key for key in sorted(found.keys() & settings.keys()) if found[key] != settings[key]]:
            changes = ", ".join(f"{key} {found[key]!r} (now {settings[key]!r})" for key in differ)
            raise ValueError(
                f"{latest} was saved with {changes}: resuming would continue another run; set them back, "
                "or train from the start in another output_dir"
            )
    accelerator.load_state(str(latest))
    if schedule is not None:
        schedule.load(latest)
    return int(latest.name.split("_")[1]), latest
