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


@pytest.fixture(scope="module")
def ray_local():
    """A real local Ray for the module's tests, on 127.0.0.1, stopped afterwards."""
    import ray

    from orchestrator.driver import loopback_only

    # address="local": a fresh instance even when a `ray start` head runs on this machine
    with loopback_only():
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()
