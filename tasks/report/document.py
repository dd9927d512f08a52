"""A tiny document model, rendered to Markdown and to HTML, and the way numbers are written in it."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field


@dataclass
class Doc:
    blocks: list[tuple] = field(default_factory=list)
    figures: dict[str, bytes] = field(default_factory=dict)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], right: int = 1) -> None:
        """`right`: columns from this index on are numbers, aligned right."""
        self.blocks.append(("table", header, rows, right))

    def figure(self, name: str, png: bytes, caption: str) -> None:
        self.figures[name] = png
        self.blocks.append(("img", name, caption))

    def markdown(self, figure_prefix: str | None = "") -> str:
        """`figure_prefix` None lists figures by path instead of embedding them (Prefect artifacts)."""
        out = []
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"{'#' * block[1]} {block[2]}")
            elif kind == "p":
                out.append(block[1])
            elif kind == "table":
                _, header, rows, right = block
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("| " + " | ".join(cell(h) for h in header) + " |")
                out.append(
                    "| " + " | ".join("---:" if i >= right else "---" for i in range(len(header))) + " |"
                )
                out += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
            elif kind == "img":
                _, name, caption = block
                if figure_prefix is None:
                    out.append(f"*Figure `{name}`: {caption}*")
                else:
                    out.append(f"![{caption}]({figure_prefix}{name})\n\n*{caption}*")
            out.append("")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [
            "<!doctype html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
            "th,td{border:1px solid #ccc;padding:3px 8px}th{background:#f3f3f3}td.n{text-align:right}"
            "img{max-width:100%}figcaption{font-style:italic}"
            "code{background:#f3f3f3}</style></head><body>",
        ]
        for block in self.blocks:
            kind = block[0]
            if kind == "h":
                out.append(f"<h{block[1]}>{inline_html(block[2])}</h{block[1]}>")
            elif kind == "p":
                out.append(f"<p>{inline_html(block[1])}</p>")
            elif kind == "table":
                _, header, rows, right = block
                out.append(
                    "<table><thead><tr>"
                    + "".join(f"<th>{html.escape(h)}</th>" for h in header)
                    + "</tr></thead><tbody>"
                )
                for r in rows:
                    cells = (
                        f'<td class="n">{html.escape(str(c))}</td>'
                        if i >= right
                        else f"<td>{html.escape(str(c))}</td>"
                        for i, c in enumerate(r)
                    )
                    out.append("<tr>" + "".join(cells) + "</tr>")
                out.append("</tbody></table>")
            elif kind == "img":
                _, name, caption = block
                name, caption = html.escape(name), html.escape(caption)
                out.append(
                    f'<figure><img src="{name}" alt="{caption}"><figcaption>{caption}</figcaption></figure>'
                )
        out.append("</body></html>")
        return "\n".join(out)


def inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code> (the only inline Markdown the report uses)."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def pvalue(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<1e-300" if p == 0 else (f"{p:.3g}" if p >= 1e-3 else f"{p:.1e}")
