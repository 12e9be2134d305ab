"""Shared test fixtures."""

from __future__ import annotations

import pytest
import torch
from accelerate.state import AcceleratorState


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
