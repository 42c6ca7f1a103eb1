"""Store operations and seconds per cell: a local disk against S3 (a moto server on 127.0.0.1).

For each backend, one process runs the store side of N cells' lifecycles without Ray, exactly as
the driver and a cell's task do them: register the cell (`put_cell`), the task body
(`orchestrator.tasks.execute_cell`: claim the attempt, `running`, heartbeat, the cell function
writing loss parts and the result row, `done`) with the test double as the cell function
(tests/doubles.py: 8 steps, 3 loss parts, no sleep), then the status read `compscale status` does.
Every call on the store's filesystem is counted through a wrapping `PyFileSystem`, by kind; time
is wall time per cell. moto is a Python server process on this machine (and on a loaded machine a
slow one), so the S3 seconds say nothing about AWS; the operation counts carry over.

    .venv/bin/python benchmarks/store_ops.py               # 20 cells per backend
    .venv/bin/python benchmarks/store_ops.py --cells 50
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.fs as pafs

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]


class CountingHandler(pafs.FileSystemHandler):
    """Delegates every call to `inner` and counts it (`workers.storage.is_object_store` looks
    through to `inner`)."""

    def __init__(self, inner: pafs.FileSystem):
        self.inner, self.calls = inner, Counter()

    def _count(self, kind: str) -> None:
        self.calls[kind] += 1

    def get_type_name(self):
        return f"counting+{self.inner.type_name}"

    def equals(self, other):
        return self is other

    def normalize_path(self, path):
        return self.inner.normalize_path(path)

    def get_file_info(self, paths):
        self.calls["stat"] += len(paths)
        return self.inner.get_file_info(paths)

    def get_file_info_selector(self, selector):
        self._count("list" + (" (recursive)" if selector.recursive else ""))
        return self.inner.get_file_info(selector)

    def create_dir(self, path, recursive):
        self._count("mkdir")
        self.inner.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self._count("delete")
        self.inner.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._count("delete")
        self.inner.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        self._count("delete")
        self.inner.delete_dir_contents("/", accept_root_dir=True)

    def delete_file(self, path):
        self._count("delete")
        self.inner.delete_file(path)

    def move(self, src, dest):
        self._count("move")
        self.inner.move(src, dest)

    def copy_file(self, src, dest):
        self._count("copy")
        self.inner.copy_file(src, dest)

    def open_input_stream(self, path):
        self._count("read")
        return self.inner.open_input_stream(path)

    def open_input_file(self, path):
        self._count("read")
        return self.inner.open_input_file(path)

    def open_output_stream(self, path, metadata):
        self._count("write")
        return self.inner.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        self._count("write")
        return self.inner.open_append_stream(path, metadata=metadata)


def measure(uri: str, cells: int) -> tuple[Counter, float]:
    """Run `cells` lifecycles on the store at `uri`; the counted calls and the wall seconds."""
    import doubles

    import orchestrator.store as store_module
    from orchestrator.cells import expand
    from orchestrator.spec import SweepSpec
    from orchestrator.store import Store
    from orchestrator.tasks import execute_cell
    from workers.layout import StoreLocation, resolve

    handler = CountingHandler(resolve(uri).filesystem)
    counting = pafs.PyFileSystem(handler)

    def counted(text, what="store"):
        location = resolve(text, what)
        return StoreLocation(counting, location.root, location.uri)

    store_module.resolve = counted  # every Store (driver's, task's, the double's) counts
    seeds = list(range(cells))
    spec = SweepSpec(name="ops", models=["tiny"], tokens=[4096], formats=["dense"], seeds=seeds)
    planned = expand(spec)
    store = Store(uri)
    store.create()
    handler.calls.clear()
    started = time.perf_counter()
    for cell in planned:
        store.put_cell(cell)
        execute_cell(cell.model_dump_json(), uri, doubles.run_cell, "bench", heartbeat_s=60)
        store.status(cell.cell_id)
    return handler.calls, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20)
    args = parser.parse_args()
    from s3 import moto_s3, unique_prefix

    control = tempfile.mkdtemp(prefix="cs-ops-")
    Path(control, "sleep_s").write_text("0")
    os.environ["COMPSCALE_DOUBLE_DIR"] = control
    rows = []
    with tempfile.TemporaryDirectory(prefix="cs-ops-") as local:
        rows.append(("local disk", *measure(f"{local}/store", args.cells)))
    with moto_s3() as env:
        os.environ.update(env)
        rows.append(
            ("S3 (moto, 127.0.0.1)", *measure(f"s3://compscale/{unique_prefix()}", args.cells))
        )
    kinds = sorted({kind for _, calls, _ in rows for kind in calls})
    print(f"store operations per cell ({args.cells} cells; register, task body, status read)")
    print(f"{'backend':<22}" + "".join(f"{k:>10}" for k in kinds) + f"{'total':>8}{'s/cell':>9}")
    for name, calls, seconds in rows:
        per = [calls[k] / args.cells for k in kinds]
        print(
            f"{name:<22}"
            + "".join(f"{v:>10.1f}" for v in per)
            + f"{sum(per):>8.1f}{seconds / args.cells:>9.3f}"
        )


if __name__ == "__main__":
    main()
