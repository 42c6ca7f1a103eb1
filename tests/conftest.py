"""Shared test fixtures."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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

    from orchestrator.cluster import loopback_only

    # address="local": a fresh instance even when a `ray start` head runs on this machine
    with loopback_only():
        ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def readme_main_command() -> str:
    """The first shell line of the README, minus its setup step (the tests already run in it)."""
    from helpers import doc_block

    first = doc_block("README.md", "compscale submit sweeps/smoke.yaml").splitlines()[0]
    command = first.split("#")[0].strip()
    assert command.startswith("scripts/setup.sh && "), command
    return command.removeprefix("scripts/setup.sh && ").replace(".venv/bin/", f"{BIN}/")


def run_shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A shell command as a user types it, with `sweeps/` pointing at the repository's sweeps and
    this checkout's code first on the path (not whichever one an editable install names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return subprocess.run(
        command.replace("sweeps/", f"{REPO}/sweeps/"),
        shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@dataclass(frozen=True)
class SmokeRun:
    """The README's first command (smoke sweep, real worker, embedded Ray, then the report), run
    in `cwd`, whose `store/` it filled; `done` is that command's process."""

    cwd: Path
    done: subprocess.CompletedProcess

    def run(self, command: str) -> subprocess.CompletedProcess:
        return run_shell(command, self.cwd)


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory) -> SmokeRun:
    """The smoke sweep runs once per test session; the tests that read it share its store."""
    cwd = tmp_path_factory.mktemp("smoke")
    return SmokeRun(cwd, run_shell(readme_main_command(), cwd))
