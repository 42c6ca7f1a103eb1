"""The embedded Ray that `connect()` starts listens on 127.0.0.1 only: every socket of every
process it started (its whole process tree below the test), workers and agents included. Nothing
is exempt: with its node IP on loopback Ray binds every server there. Token auth stays on."""

import ipaddress
import os
import socket
import time

import pytest

from orchestrator.cluster import connect


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def bound_sockets() -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP and bound UDP socket of this process
    and its descendants."""
    import psutil  # Ray's own dependency (vendored under ray/thirdparty_files)

    me = psutil.Process()
    found = []
    for process in [me, *me.children(recursive=True)]:
        try:
            name = process.name()
            for sock in process.net_connections(kind="inet"):
                if sock.status == psutil.CONN_LISTEN or sock.type == socket.SOCK_DGRAM:
                    found.append((name, sock.laddr.ip, sock.laddr.port))
        except psutil.NoSuchProcess:
            continue
    return found


@pytest.mark.slow
def test_the_embedded_ray_binds_every_port_to_loopback():
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    assert not ray.is_initialized(), "another test left Ray running in this process"
    assert connect()
    try:
        if os.environ.get("RAY_AUTH_MODE") != "disabled":  # Ray's default: on
            assert is_token_auth_enabled(), "loopback_only must not turn token auth off"

        @ray.remote(num_cpus=1)
        def worker_pid() -> int:
            return os.getpid()

        assert ray.get([worker_pid.remote() for _ in range(4)])  # core workers are listening
        deadline = time.monotonic() + 60
        names: set[str] = set()
        while time.monotonic() < deadline:  # the agents start after ray.init returns
            names = {name for name, _, _ in bound_sockets()}
            if {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names:
                break
            time.sleep(0.5)
        sockets = bound_sockets()
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
        exposed = [entry for entry in sockets if not is_loopback(entry[1])]
        assert exposed == [], f"listening beyond loopback: {exposed}"
    finally:
        ray.shutdown()
