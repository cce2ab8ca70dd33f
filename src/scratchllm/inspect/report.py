"""Output helpers: a PNG per figure and one self-contained HTML page (PNGs inlined as data: URIs)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from scratchllm.io import atomic_write_bytes, atomic_write_text

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;text-align:left;font-size:.9em} th{background:#f3f3f3}
img{max-width:100%} .tok{font-family:ui-monospace,monospace;white-space:pre-wrap;line-height:1.9}
.tok span{border-radius:3px;padding:1px 0} .note{color:#666;font-size:.9em}
"""

# Pastel colours cycled over tokens, as tokenizer visualisers do: neighbours always differ.
TOKEN_COLOURS = ["#fde68a", "#a7f3d0", "#bfdbfe", "#fbcfe8", "#ddd6fe", "#fed7aa", "#c7d2fe", "#bbf7d0"]


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> bytes:
    """Write the figure as PNG (atomically) and return its bytes, for inlining in the HTML page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    pyplot().close(fig)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def img(png: bytes, alt: str) -> str:
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def token_spans(pieces: list[str], ids: list[int]) -> str:
    """The text with each token on its own coloured background (title: the token id)."""
    out = []
    for i, (piece, tid) in enumerate(zip(pieces, ids)):
        shown = esc(piece).replace("\n", "↵\n")
        out.append(f'<span style="background:{TOKEN_COLOURS[i % len(TOKEN_COLOURS)]}" title="id {tid}">{shown}</span>')
    return '<div class="tok">' + "".join(out) + "</div>"


def write_page(path: Path, title: str, sections: list[tuple[str, str]]) -> None:
    """sections: (heading, inner HTML). No scripts, fonts or links to fetch: it opens offline."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{STYLE}</style></head><body><h1>{esc(title)}</h1>"]
    for heading, inner in sections:
        parts.append(f"<h2>{esc(heading)}</h2>{inner}")
    parts.append("</body></html>\n")
    atomic_write_text(path, "".join(parts))
