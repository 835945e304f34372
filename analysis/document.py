"""A tiny document model, rendered to both Markdown and a standalone HTML page.

The report is written once as a list of blocks (headings, paragraphs, lists, images, tables)
and rendered twice, so ``report.md`` and ``report.html`` cannot say different things. Text
may use the little Markdown that :func:`inline` turns into HTML.
"""
from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd

from analysis.tables import numeric_column, to_markdown

# Readable from a phone to a wide screen: a table wider than the page scrolls inside its own
# box (the page never does); numbers stay on one line, text columns wrap; long paths and URIs
# break anywhere rather than widen the page.
_STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em;"
          "line-height:1.45}.table-wrap{overflow-x:auto;margin:1em 0}"
          "table{border-collapse:collapse;font-size:.9em}"
          "th,td{border-bottom:1px solid #ccc;padding:.25em .6em;text-align:right;"
          "vertical-align:top}td{white-space:nowrap}"
          "td.text,th.text{text-align:left;white-space:normal;min-width:9em}"
          "td.text:last-child{min-width:16em}"
          "th:first-child,td:first-child{text-align:left}"
          "figure{margin:1em 0}img{max-width:100%;height:auto}"
          "code{background:#f4f4f4;padding:0 .2em}code,a{overflow-wrap:anywhere}")


class Document:
    """Blocks in order; ``markdown()`` and ``html(title)`` render them."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: Sequence[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def image(self, path: str, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def table(self, display: pd.DataFrame) -> None:
        """A table of display strings (``tables.format_table``)."""
        self.blocks.append(("table", display))

    def markdown(self) -> str:
        out = []
        for kind, data in self.blocks:
            if kind == "h":
                out.append("#" * data[0] + " " + data[1])
            elif kind == "p":
                out.append(data)
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in data))
            elif kind == "img":
                out.append(f"![{data[1]}]({data[0]})")
            elif kind == "table":
                out.append(to_markdown(data).rstrip("\n"))
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, data in self.blocks:
            if kind == "h":
                body.append(f"<h{data[0]}>{inline(data[1])}</h{data[0]}>")
            elif kind == "p":
                body.append(f"<p>{inline(data)}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in data) + "</ul>")
            elif kind == "img":
                body.append(f'<figure><img src="{html.escape(data[0])}" alt="{html.escape(data[1])}">'
                            f"</figure>")
            elif kind == "table":
                body.append(html_table(data))
        return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
                f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
                + "\n".join(body) + "\n</body></html>\n")


def html_table(display: pd.DataFrame) -> str:
    """A table in its own scrolling box; text columns (class ``text``) may wrap."""
    kinds = ["" if numeric_column(display, c) else ' class="text"' for c in display.columns]
    head = "".join(f"<th{k}>{html.escape(str(c))}</th>" for c, k in zip(display.columns, kinds))
    rows = "".join("<tr>" + "".join(f"<td{k}>{html.escape(str(v))}</td>" for v, k in zip(r, kinds))
                   + "</tr>" for r in display.itertuples(index=False))
    return (f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{rows}</tbody></table></div>")


def inline(text: str) -> str:
    """The little Markdown the report uses, as HTML: `code`, **bold**, [text](link)."""
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r'<a href="\2">\1</a>', out)
