"""Write results: ``results.json`` plus the same numbers as a Markdown and an HTML table (atomically)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from scratchllm.io import atomic_write_text

HEADLINE = ("acc", "acc_norm", "exact_match", "exact_match_flexible", "bits_per_byte", "word_perplexity",
            "token_perplexity", "byte_perplexity", "safe_rate", "over_refusal_rate", "harmful_compliance_rate",
            "score", "pairwise_win_rate", "pairwise_loss_rate", "pairwise_tie_rate", "pairwise_consistency")


def metric_rows(results: dict[str, Any]) -> list[list[str]]:
    """[task, metric, value, ± stderr, n] rows, headline metrics first."""
    rows = []
    for name, task in results["tasks"].items():
        metrics = task.get("metrics", {})
        keys = [k for k in metrics if not k.endswith("_stderr")]
        keys.sort(key=lambda k: (HEADLINE.index(k) if k in HEADLINE else len(HEADLINE), k))
        for key in keys:
            value = metrics[key]
            err = metrics.get(f"{key}_stderr")
            rows.append([name, key, _fmt(value), f"± {_fmt(err)}" if _finite(err) else "", str(task.get("n", ""))])
    return rows


def baseline_rows(results: dict[str, Any]) -> list[list[str]]:
    """[task, model, token ppl, word ppl, bits/byte] for perplexity tasks with baselines."""
    rows = []
    for name, task in results["tasks"].items():
        if task.get("type") != "perplexity":
            continue
        models = {results.get("model", {}).get("name", "model"): task["metrics"]}
        models.update({k: v for k, v in task.get("baselines", {}).items() if not k.startswith("_")})
        for model, m in models.items():
            rows.append([name, model, _fmt(m["token_perplexity"]), _fmt(m["word_perplexity"]), _fmt(m["bits_per_byte"])])
    return rows


def safety_rows(results: dict[str, Any]) -> list[list[str]]:
    rows = []
    for name, task in results["tasks"].items():
        for cat, c in task.get("categories", {}).items():
            kind = "harmful" if c["harmful"] else "benign control"
            rows.append([name, cat, kind, str(c["n"]), _fmt(c["refusal_rate"])])
    return rows


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:.4f}" if abs(x) < 1000 else f"{x:.1f}"
    return str(x)


TABLES = (
    ("Results", ["task", "metric", "value", "stderr", "n"], metric_rows),
    ("Perplexity next to n-gram baselines (same tokenizer)", ["task", "model", "token ppl", "word ppl", "bits/byte"],
     baseline_rows),
    ("Safety by category", ["task", "category", "kind", "n", "refusal rate"], safety_rows),
)


def to_markdown(results: dict[str, Any]) -> str:
    model = results.get("model", {})
    lines = [f"# Evaluation of {model.get('name', 'model')}", "",
             f"Model: `{model.get('path', '')}` ({model.get('backend', '')}); {results.get('created', '')}", ""]
    for title, header, fn in TABLES:
        rows = fn(results)
        if not rows:
            continue
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines)


def to_html(results: dict[str, Any]) -> str:
    model = results.get("model", {})
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">',
             f"<title>Evaluation of {esc(str(model.get('name', 'model')))}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:2em}"
             "td,th{border:1px solid #ccc;padding:4px 10px;text-align:left}th{background:#f4f4f4}</style>",
             "</head><body>", f"<h1>Evaluation of {esc(str(model.get('name', 'model')))}</h1>",
             f"<p>Model: <code>{esc(str(model.get('path', '')))}</code> ({esc(str(model.get('backend', '')))}); "
             f"{esc(str(results.get('created', '')))}</p>"]
    for title, header, fn in TABLES:
        rows = fn(results)
        if not rows:
            continue
        parts.append(f"<h2>{esc(title)}</h2><table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_results(results: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """results.json, results.md, results.html (and samples_<task>.jsonl when samples were logged)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slim = {**results, "tasks": {}}
    written = []
    for name, task in results["tasks"].items():
        task = dict(task)
        samples = task.pop("samples", None)
        slim["tasks"][name] = task
        if samples is not None:
            path = out_dir / f"samples_{name}.jsonl"
            atomic_write_text(path, "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples))
            written.append(path)
    for filename, text in (("results.json", json.dumps(_json_safe(slim), indent=2, ensure_ascii=False) + "\n"),
                           ("results.md", to_markdown(slim)), ("results.html", to_html(slim))):
        atomic_write_text(out_dir / filename, text)
        written.append(out_dir / filename)
    return written


def _json_safe(value: Any) -> Any:
    """NaN/inf become null: results.json stays strict JSON that any parser reads."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
