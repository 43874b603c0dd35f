"""One list of blocks (headings, paragraphs, tables, figures) -> report.md and a self-contained
report.html (CSS inline, figures as base64 PNG data URIs: no file or URL is referenced)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .figures import Plot


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    df: pd.DataFrame
    caption: str = ""


@dataclass(frozen=True)
class Figure:
    plot: Plot


def _md_cell(v) -> str:
    s = "" if v is None or (isinstance(v, float) and v != v) else str(v)
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks, title: str) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, Table):
            if b.caption:
                out += [b.caption, ""]
            df = b.df.map(_md_cell)
            out += [df.to_markdown(index=False, disable_numparse=True), ""]
        elif isinstance(b, Figure):
            p = b.plot
            out += [f"![{p.name}]({p.png.name})", "", f"*{p.caption}* (vector: [{p.svg.name}]({p.svg.name}))", ""]
    return "\n".join(out).rstrip() + "\n"


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1400px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; } h3 { margin-top: 1.5em; }
.tablewrap { overflow-x: auto; margin: 0.5em 0 1.5em 0; }
table { border-collapse: collapse; font-size: 0.82em; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; }
th { min-width: 4.5em; max-width: 11em; vertical-align: bottom; }
/* cells wrap at spaces only when the table would not fit otherwise, so no table needs sideways
   scrolling at 1400 px; the change columns come right after each row's identity */
th { background: #f2f2f2; position: sticky; top: 0; }
td:first-child, th:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #fafafa; }
figure { margin: 1em 0 2em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #444; max-width: 60em; }
.caption { font-size: 0.9em; color: #444; }
"""


def _para_html(text: str) -> str:
    # `code` spans only; everything else is escaped text
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks, title: str) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            lvl = min(b.level, 6)
            body.append(f"<h{lvl}>{html.escape(b.text)}</h{lvl}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_para_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_para_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            if b.caption:
                body.append(f'<p class="caption">{_para_html(b.caption)}</p>')
            table = b.df.to_html(index=False, escape=True, border=0, na_rep="")
            body.append(f'<div class="tablewrap">{table}</div>')
        elif isinstance(b, Figure):
            data = base64.b64encode(b.plot.png.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b.plot.name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{_para_html(b.plot.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")


def write(blocks, title: str, out_dir: Path) -> tuple[Path, Path]:
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(to_markdown(blocks, title))
    page.write_text(to_html(blocks, title))
    return md, page
