"""Rebuild the bundled corpus from a CPython 3.11 standard library (once; the output is committed).

Usage: python workers/corpus/build_corpus.py /path/to/lib/python3.11
The corpus is the sorted list of `.py` sources (tests, vendored tools, codec tables and
build-specific files left out) concatenated until `MAX_BYTES`, gzipped with a fixed mtime so the
bytes are reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import sys
from pathlib import Path

MAX_BYTES = 8 * 1024 * 1024
EXCLUDED_PARTS = {
    "test",
    "tests",
    "site-packages",
    "idlelib",
    "lib2to3",
    "encodings",
    "turtledemo",
    "__pycache__",
}
HERE = Path(__file__).parent


def select_sources(stdlib: Path) -> list[Path]:
    """Sorted stdlib `.py` files, skipping tests and machine-specific build data."""
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if EXCLUDED_PARTS & set(relative.parts) or relative.name.startswith("_sysconfigdata"):
            continue
        if relative.parts[0].startswith("config-"):
            continue
        files.append(path)
    return files


def main(stdlib: Path) -> None:
    chunks, names, size = [], [], 0
    for path in select_sources(stdlib):
        data = path.read_bytes()
        if size + len(data) > MAX_BYTES:
            break
        chunks.append(data)
        names.append(path.relative_to(stdlib).as_posix())
        size += len(data)
    text = b"".join(chunks)
    with gzip.GzipFile(HERE / "cpython311-stdlib.txt.gz", "wb", mtime=0, compresslevel=9) as out:
        out.write(text)
    meta = {
        "name": "cpython311-stdlib",
        "description": "CPython 3.11 standard library .py sources, concatenated, byte-level",
        "licence": "Python Software Foundation License Version 2",
        "bytes": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
        "python_version": sys.version.split()[0],
        "files": names,
    }
    (HERE / "cpython311-stdlib.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{len(names)} files, {len(text)} bytes, sha256 {meta['sha256']}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
