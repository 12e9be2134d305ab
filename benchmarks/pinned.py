"""glibc's allocator pinned for timing: by default it hands buffers over 32 MB back to the system and
page-faults them in again on every call, which makes CPU timings move with process history (the
performance notes in shared/notes). glibc reads these settings at start-up only."""

from __future__ import annotations

import os
import sys

MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "1000000000"}


def restart_pinned(**env: str) -> None:
    """Starts this script again with the allocator pinned (and `env` set), unless it already runs so."""
    wanted = {**MALLOC, **env}
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
