"""A self-contained HTML report: tables and PNG figures embedded, openable with no server."""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from compscale.files import write_text_atomic

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
figure { margin: 1em 0; } img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; } .note { color: #555; }
"""


@dataclass(frozen=True)
class Section:
    """One heading of the report with its prose, tables (caption, frame) and figure files."""

    heading: str
    text: str = ""
    tables: Sequence[tuple[str, pd.DataFrame]] = field(default_factory=tuple)
    figures: Sequence[Path] = field(default_factory=tuple)


def _figure_html(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    name = html.escape(path.stem.replace("_", " "))
    return (
        f'<figure><img alt="{name}" src="data:image/png;base64,{encoded}">'
        f"<figcaption>{name}</figcaption></figure>"
    )


def _table_html(caption: str, frame: pd.DataFrame) -> str:
    table = frame.to_html(index=False, float_format=lambda value: f"{value:.4g}", na_rep="")
    return table.replace(
        '<table border="1" class="dataframe">',
        f"<table><caption>{html.escape(caption)}</caption>",
        1,
    )


def render_html(title: str, sections: Sequence[Section], footer: str = "") -> str:
    """The whole page as one string; figures are inlined as base64 PNG data URIs."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.text:
            parts.append(f"<pre>{html.escape(section.text)}</pre>")
        parts.extend(_table_html(caption, frame) for caption, frame in section.tables)
        parts.extend(_figure_html(Path(path)) for path in section.figures)
    if footer:
        parts.append(f'<p class="note">{html.escape(footer)}</p>')
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(
    title: str, sections: Sequence[Section], figure_dir: str, footer: str = ""
) -> str:
    """The same content as Markdown; figures are linked as `<figure_dir>/<file name>`."""
    parts = [f"# {title}", ""]
    for section in sections:
        parts += [f"## {section.heading}", ""]
        if section.text:
            parts += ["```", section.text.rstrip(), "```", ""]
        for caption, frame in section.tables:
            table = frame.to_markdown(index=False, floatfmt=".4g", missingval="")
            parts += [f"**{caption}**", ""] if caption else []
            parts += [table, ""]
        for path in section.figures:
            name = Path(path).name
            parts += [f"![{Path(path).stem.replace('_', ' ')}]({figure_dir}/{name})", ""]
    if footer:
        parts += [footer, ""]
    return "\n".join(parts)


def write_report(out_dir: Path, title: str, sections: Sequence[Section], footer: str = "") -> Path:
    """Write `report.html` into `out_dir` atomically and return its path."""
    return write_text_atomic(out_dir / "report.html", render_html(title, sections, footer))
