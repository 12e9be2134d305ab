"""Shared test fixtures."""

from __future__ import annotations

import shutil

import pytest
import torch
from accelerate.state import AcceleratorState


@pytest.fixture(scope="module", autouse=True)
def module_scratch_removed(request, tmp_path_factory):
    """Remove what a module's fixtures wrote below pytest's basetemp once the module passes.

    Module fixtures build data, checkpoints and whole runs (the MSR-VTT recipe's run alone is 0.6 GB); kept to the
    session's end they add up to 2.5 GB, which filled a CI machine's /tmp. A module with a failure keeps its
    folders to look at. Function-scoped `tmp_path` folders go as each test passes
    (`tmp_path_retention_policy = "failed"` in pyproject.toml).
    """
    base = tmp_path_factory.getbasetemp()
    before, failed = set(base.iterdir()), request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from intra-op threads; on a busy CPU the extra threads only wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def bf16():
    """bf16 autocast on CPU; Accelerate keeps one precision per process, so its state is reset around it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield "bf16"
    AcceleratorState._reset_state(reset_partial_state=True)
