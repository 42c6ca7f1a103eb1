"""Connecting to Ray, or starting it, and sizing the driver's work to the cluster it found.

This runs in the driver process before and while it drives (`orchestrator.driver`), never inside
a Ray task: join a cluster or start an embedded local one with every port on 127.0.0.1
(`connect`, `loopback_only`), size how many cells to keep in flight (`auto_in_flight`), and say
when no node of the cluster can run a cell (`unplaceable`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from orchestrator.raylog import token_auth_notice
from orchestrator.spec import Resources
from workers.config import CellConfig


def connect(address: str | None = None) -> bool:
    """Join the Ray cluster at `address` (or $RAY_ADDRESS, as under `ray job submit`; one on
    127.0.0.1 is joined there, `loopback_only`), else start an embedded local one with this
    machine's CPUs, every port of it on 127.0.0.1. Returns True if it started one."""
    import ray

    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        # Ray would dial 127.0.0.1:PORT at the routable address, where a loopback cluster is deaf.
        on_loopback = target.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
        try:
            with (
                loopback_only() if on_loopback else nullcontext(),
                token_auth_notice(remote=True),
            ):
                ray.init(address=address, logging_level="WARNING")
        except ConnectionError as error:
            raise ValueError(
                f"{error} (is a head running there? with token authentication on, set "
                "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or ~/.ray/auth_token)"
            ) from None
        return False
    with loopback_only(), token_auth_notice(remote=False):
        ray.init(
            address="local",  # a new instance, never a cluster that `ray start` left behind
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            logging_level="WARNING",
        )
    return True


@contextmanager
def loopback_only() -> Iterator[None]:
    """Make a Ray instance started in this block listen on 127.0.0.1 only (and a driver joining
    one at 127.0.0.1 dial it there).

    Ray binds each server (GCS, raylet, object manager, core workers, dashboard and runtime-env
    agents, metrics exporters) to the node's IP address, but it replaces a node IP of 127.0.0.1
    by the machine's routable address (`ray._private.services.resolve_ip_for_localhost`; see
    ray-project/ray#26293), so `_node_ip_address="127.0.0.1"` alone leaves every port on the
    network. It keeps loopback only where multi-node clusters are off, its mode on macOS and
    Windows (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`), a setting read once at import: so it is set
    on the imported module for this block, and the processes started in it get 127.0.0.1 on their
    command lines. tests/orchestrator/test_loopback.py lists the sockets to hold Ray to it.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def auto_in_flight(
    cluster: dict[str, float], resources: Resources, cells: Iterable[CellConfig]
) -> int:
    """Twice the cells the cluster runs at once (by CPUs and GPUs): none waits on the driver."""
    world = max((cell.world_size for cell in cells), default=1)
    per_cell = {"CPU": resources.cpus * world, "GPU": resources.gpus * world}
    fits = [cluster.get(kind, 0) / need for kind, need in per_cell.items() if need > 0]
    return max(2, int(2 * min(fits, default=cluster.get("CPU", 1))))


def unplaceable(nodes: list[dict[str, Any]], resources: Resources) -> str | None:
    """Why no cell can start, or None: no alive node (`ray.nodes()`) has the CPUs and GPUs that
    one cell, or one worker of a DDP cell, asks for. Ray keeps such tasks pending without a word
    until a node that fits joins (an autoscaler may add one), so the driver says it."""
    need = {"CPU": resources.cpus, "GPU": resources.gpus}
    need = {kind: amount for kind, amount in need.items() if amount > 0}
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    if any(all(total.get(kind, 0) >= amount for kind, amount in need.items()) for total in alive):
        return None
    wanted = " and ".join(f"{amount:g} {kind}" for kind, amount in need.items())
    largest = ", ".join(
        f"{max((total.get(kind, 0) for total in alive), default=0):g} {kind}" for kind in need
    )
    return (
        f"no alive node of the Ray cluster ({len(alive)} nodes; at most {largest} on one) has "
        f"the {wanted} one cell asks for (the spec's resources); its cells wait until one joins"
    )
