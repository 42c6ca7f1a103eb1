"""The HTML report stands alone: figures inline, tables escaped, no server or network needed."""

import base64
import re
import shutil
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from compscale.report import Section, write_report


@pytest.fixture
def figure(tmp_path):
    path = tmp_path / "loss_vs_params.png"
    fig, axis = plt.subplots(figsize=(3, 2))
    axis.plot([1, 2, 3], [3, 2, 1])
    fig.savefig(path)
    plt.close(fig)
    return path


def test_report_embeds_figures_and_tables_without_external_references(tmp_path, figure):
    table = pd.DataFrame({"format": ["<b>int4</b>", "sp50"], "rho": [0.81234, 0.6]})
    out = write_report(
        tmp_path / "report",
        "smoke & friends",
        [Section("Capacities", "fitted by Huber", [("per-format rho", table)], [figure])],
    )
    page = out.read_text()
    assert "smoke &amp; friends" in page
    assert "&lt;b&gt;int4&lt;/b&gt;" in page, "cell text must be escaped"
    assert "0.8123" in page
    assert not re.search(r"""(src|href)=["']?(https?:|file:|/)""", page)
    (encoded,) = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert base64.b64decode(encoded) == figure.read_bytes()
    assert not list(out.parent.glob("*.tmp")), "the write is atomic: no temp file left behind"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_headless_chromium(tmp_path, figure):
    out = write_report(tmp_path, "render check", [Section("Figure", figures=[figure])])
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}", "--window-size=900,700", out.as_uri(),
        ],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    assert shot.stat().st_size > 5_000
