"""One self-contained HTML page per report: the table, notes and figures in a single file.

Self-contained means no external requests at all (no CDN stylesheet, script or font): the page
has to open identically offline, in an archived artefact or behind a hospital firewall. The CSS
is embedded and the figures are inlined as base64 data URIs. The output is deterministic (no
timestamps), so regenerating a report from the same runs gives the same bytes.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

#: Data-URI media types by file suffix.
IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
               ".svg": "image/svg+xml"}

# System font stacks only: a web font would be an external request.
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       max-width: 1400px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.5em; margin-bottom: 0.3em; }
p.caption { color: #444; }
div.table { overflow-x: auto; margin: 1em 0; }
div.table table { border-collapse: collapse; font-size: 0.85em; }
div.table th, div.table td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
div.table thead th { background: #eef1f5; text-align: center; }
div.table tbody th { text-align: left; font-weight: normal; }
div.table td:first-child { text-align: left; }
div.table td { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
div.table tbody tr:nth-child(even) { background: #f7f8fa; }
div.table b, div.table strong { font-weight: 700; }
ul.notes { color: #444; }
figure { margin: 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; margin-top: 0.3em; }
"""


@dataclass
class HtmlSection:
    """A further table after the main one (e.g. "Model selection"): its title, caption, the
    table's HTML (inserted as is, like `table_html`) and footnotes under it."""

    title: str
    caption: str
    table_html: str
    footnotes: Sequence[str] = field(default_factory=list)


def _section(section: HtmlSection) -> str:
    footnotes = "".join(f'\n<p class="caption">{escape(note)}</p>'
                        for note in section.footnotes)
    return (f"<h2>{escape(section.title)}</h2>\n"
            f'<p class="caption">{escape(section.caption)}</p>\n'
            f'<div class="table">\n{section.table_html}\n</div>{footnotes}')


def _data_uri(path: Path) -> str:
    path = Path(path)
    media_type = IMAGE_TYPES.get(path.suffix.lower())
    if media_type is None:
        raise ValueError(f"{path}: cannot embed {path.suffix!r} files; use one of "
                         f"{sorted(IMAGE_TYPES)}")
    return f"data:{media_type};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _figure(name: str, path: Path) -> str:
    return (f'<figure><img src="{_data_uri(path)}" alt="{escape(name)}">'
            f"<figcaption>{escape(name)}</figcaption></figure>")


def render_html(*, title: str, caption: str, table_html: str, figures: Mapping[str, Path],
                notes: Sequence[str] = (), sections: Sequence[HtmlSection] = ()) -> str:
    """The report page: title, caption, table, notes, the further sections (each with its
    title, caption, table and footnotes), then each figure with its name.

    `table_html` is inserted as is (it comes from pandas' `DataFrame.to_html` or
    `Styler.to_html`, which escape cell text themselves), as are the sections' tables; title,
    caption, notes, figure names and the sections' titles, captions and footnotes are escaped
    here.
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="medad-bench">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="caption">{escape(caption)}</p>',
        f'<div class="table">\n{table_html}\n</div>',
    ]
    if notes:
        items = "".join(f"<li>{escape(note)}</li>" for note in notes)
        parts.append(f'<ul class="notes">{items}</ul>')
    parts += [_section(section) for section in sections]
    parts += [_figure(name, path) for name, path in figures.items()]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
