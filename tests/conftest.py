"""Shared test fixtures."""

import pytest


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread; two threads stall when other jobs share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
