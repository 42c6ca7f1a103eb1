"""A moto S3 server for tests: a subprocess on a free port of 127.0.0.1, stopped by its pid."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def moto_s3(
    bucket: str = "compscale", check_credentials: bool = False, log: Path | None = None
) -> Iterator[dict[str, str]]:
    """Start `moto_server` on 127.0.0.1, create `bucket`; yields the AWS_* variables that point
    pyarrow (and boto3) at it. The server runs in its own temp dir and is stopped by pid. With
    `check_credentials` every request after the bucket's creation must be signed by a key of
    moto's IAM, which has none: any key is refused (`InvalidAccessKeyId`). With `log`, the
    server's request log (one line per request: method, path, status) goes to that file."""
    port = _free_port()
    checks = {"INITIAL_NO_AUTH_ACTION_COUNT": "1"} if check_credentials else {}
    server = Path(sys.executable).parent / "moto_server"
    workdir = tempfile.mkdtemp(prefix="cs-moto-")
    log_file = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed below)
    process = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        cwd=workdir,
        env=os.environ | checks,
        stdout=subprocess.DEVNULL,
        stderr=log_file,
        start_new_session=True,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start")
            time.sleep(0.1)
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=env["AWS_ENDPOINT_URL"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=bucket)
        yield env | {"COMPSCALE_TEST_BUCKET": bucket}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            log_file.close()
        with contextlib.suppress(OSError):
            for entry in Path(workdir).iterdir():
                entry.unlink()
            os.rmdir(workdir)


def unique_prefix() -> str:
    return uuid.uuid4().hex[:8]
