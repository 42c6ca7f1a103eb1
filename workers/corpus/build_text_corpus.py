"""Rebuild the bundled English text, the King James Bible, from Debian's `bible-kjv` packages
(once; the output is committed).

Usage: python workers/corpus/build_text_corpus.py [UNPACKED_DIR]
Without UNPACKED_DIR it runs `apt-get download bible-kjv bible-kjv-text` into a temporary folder
and unpacks both with `dpkg-deb -x` (a Debian machine, nothing installed). The packages keep the
text compressed in `usr/lib/bible.data`; their own `bible` program dumps it verse by verse with
`-f` (one verse a line, led by its reference, e.g. `Ge1:1 `). The reference is cut off, so what
is left is the 31,102 verses of prose, one a line, in canonical order; gzipped with a fixed
mtime so the bytes are reproducible.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

NAME = "kjv-bible"
PACKAGES = ("bible-kjv", "bible-kjv-text")
WHOLE_TEXT = "Gen1:1-Rev22:21"
HERE = Path(__file__).parent


def unpack(folder: Path) -> Path:
    """Download the two packages into `folder` and unpack them into `folder/root`."""
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=folder, check=True)
    root = folder / "root"
    for deb in sorted(folder.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def package_versions(root: Path) -> dict[str, str]:
    """The versions of the unpacked packages, from their Debian changelogs' first lines."""
    versions = {}
    for package in PACKAGES:
        changelog = root / "usr/share/doc" / package / "changelog.gz"
        first = gzip.decompress(changelog.read_bytes()).decode().splitlines()[0]
        versions[package] = first.split("(", 1)[1].split(")", 1)[0]
    return versions


def verses(root: Path) -> bytes:
    """The whole text, one verse a line, without the references the `bible` program prints."""
    dump = subprocess.run(
        [str(root / "usr/bin/bible"), "-f", "-p", str(root / "usr/lib"), WHOLE_TEXT],
        check=True,
        capture_output=True,
    ).stdout
    lines = [line.split(b" ", 1)[1] for line in dump.splitlines() if line.strip()]
    return b"\n".join(lines) + b"\n"


def main(root: Path) -> None:
    text = verses(root)
    with gzip.GzipFile(HERE / f"{NAME}.txt.gz", "wb", mtime=0, compresslevel=9) as out:
        out.write(text)
    meta = {
        "name": NAME,
        "description": "King James Version of the Bible (1611), one verse a line, byte-level",
        "licence": "public domain (the Debian packages' copyright file: the copyright expired)",
        "packages": package_versions(root),
        "source_file": "usr/lib/bible.data, dumped with usr/bin/bible -f " + WHOLE_TEXT,
        "verses": text.count(b"\n"),
        "bytes": len(text),
        "sha256": hashlib.sha256(text).hexdigest(),
    }
    (HERE / f"{NAME}.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"{meta['verses']} verses, {len(text)} bytes, sha256 {meta['sha256']}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as scratch:
            main(unpack(Path(scratch)))
