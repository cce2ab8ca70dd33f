"""The run report: ``report/report.md`` and ``report/report.html`` (same content) plus PNG plots.

Everything comes from files the stages wrote (markers in ``.pipeline/``, ``metrics.jsonl`` of the
training stages, ``eval/summary.json``, ``serve/check.json``), so the report can be rebuilt at any
time with ``--from report``. The document is a list of blocks rendered to both formats.
"""

from __future__ import annotations

import html
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

from scratchllm import __version__
from scratchllm.io import atomic_write_text
from scratchllm.pipeline.config import STAGE_NAMES
from scratchllm.pipeline.runner import STATE_DIR, Context
from scratchllm.train.tracking import git_commit, read_metrics

Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", file, alt) | ("code", text)


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "n/a"
        return f"{x:,.{digits}f}" if abs(x) >= 0.01 or x == 0 else f"{x:.2e}"
    return str(x)


def versions() -> dict[str, str]:
    import numpy
    import torch

    out = {"scratchllm": __version__, "git commit": git_commit(Path(__file__).parent) or "unknown (not a git checkout)",
           "python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__,
           "platform": platform.platform(), "cpu cores": str(os.cpu_count())}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except ImportError:
        pass
    return out


# ------------------------------------------------------------------------------------------------
# plots


def _plot_training(stage: str, rows: list[dict[str, Any]], out: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in rows if r.get("kind") == "train"]
    val = [r for r in rows if r.get("kind") == "val"]
    if not train:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        axes[0].plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val")
    axes[0].set(title=f"{stage}: loss", xlabel="step")
    axes[0].legend()
    if any("lr" in r for r in train):
        axes[1].plot([r["step"] for r in train if "lr" in r], [r["lr"] for r in train if "lr" in r])
    axes[1].set(title="learning rate", xlabel="step")
    if any("tokens_per_s" in r for r in train):
        axes[2].plot([r["step"] for r in train if "tokens_per_s" in r], [r["tokens_per_s"] for r in train if "tokens_per_s" in r])
    axes[2].set(title="tokens/s", xlabel="step")
    fig.tight_layout()
    name = f"{stage}_training.png"
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


def _plot_ablation(curves: dict[str, list[dict[str, Any]]], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    for scheme, rows in curves.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], "o-", label=scheme)
    ax.set(title="validation loss by position scheme", xlabel="step", ylabel="nats/token")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=90)
    plt.close(fig)
    return "ablation.png"


def _plot_bars(labels: list[str], values: list[float], title: str, ylabel: str, name: str, out: Path,
               log: bool = False) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.4))
    bars = ax.bar(labels, values, color=["#4878d0" if not lbl.startswith("baseline") else "#aaaaaa" for lbl in labels])
    ax.bar_label(bars, fmt="%.1f")
    ax.set(title=title, ylabel=ylabel)
    if log:
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / name, dpi=90)
    plt.close(fig)
    return name


# ------------------------------------------------------------------------------------------------
# the document


def build_blocks(ctx: Context, out: Path) -> tuple[list[Block], dict[str, Any]]:
    blocks: list[Block] = [("h", 1, ctx.cfg.report.title)]
    markers = {p.name.removesuffix(".done.json"): json.loads(p.read_text(encoding="utf-8"))
               for p in sorted((ctx.run_dir / STATE_DIR).glob("*.done.json"))}
    order = [s for s in _stage_order(ctx) if s in markers]
    blocks.append(("p", f"Run directory `{ctx.run_dir}`. Reproduce every number with `{ctx.resume_command}` "
                        "(the exact config is below; a rerun skips completed stages, `--from STAGE` redoes one)."))
    facts: dict[str, Any] = {}

    # Headline: held-out perplexity vs baselines.
    ev = _read(ctx.dir("eval") / "summary.json")
    if ev:
        blocks.append(("h", 2, "Held-out perplexity against n-gram baselines"))
        h = ev.get("heldout", {})
        blocks.append(("p", f"{h.get('documents')} documents of the run's val split ({_fmt(h.get('tokens'))} tokens, "
                            f"{_fmt(h.get('bytes'))} bytes), never trained on. The baselines are fit on "
                            f"{_fmt(ev.get('baseline_train_tokens'))} tokens of the same train split with the same "
                            "tokenizer (unigram: add-one; bigram: Witten-Bell; KN: interpolated modified Kneser-Ney, order 3)."))
        rows, labels, values = [], [], []
        for label, m in ev["models"].items():
            t = m["tasks"]["heldout"]
            rows.append([f"model: {label}", _fmt(m["parameters"]), _fmt(t["token_perplexity"]), _fmt(t["bits_per_byte"], 3),
                         _fmt(ev["beats_baselines"].get(label))])
            labels.append(label)
            values.append(t["token_perplexity"])
        for name, b in ev.get("baselines", {}).items():
            rows.append([f"baseline: {name}", "", _fmt(b["token_perplexity"]), _fmt(b["bits_per_byte"], 3), ""])
            labels.append(f"baseline\n{name}")
            values.append(b["token_perplexity"])
        blocks.append(("table", ["model", "parameters", "token perplexity", "bits/byte", "beats all baselines"], rows))
        blocks.append(("img", _plot_bars(labels, values, "held-out token perplexity (lower is better)", "perplexity",
                                         "baselines.png", out, log=True), "held-out perplexity vs baselines"))
        facts["heldout_ppl"] = {k: v["tasks"]["heldout"]["token_perplexity"] for k, v in ev["models"].items()}
        facts["baseline_ppl"] = {k: v["token_perplexity"] for k, v in ev.get("baselines", {}).items()}
        others = [(label, name, r) for label, m in ev["models"].items() for name, r in m["tasks"].items() if name != "heldout"]
        if others:
            blocks.append(("h", 3, "Benchmark tasks"))
            blocks.append(("table", ["model", "task", "metric", "value"],
                           [[lbl, name, k, _fmt(v, 4)] for lbl, name, r in others for k, v in r.items()
                            if not k.endswith("_stderr")]))

    # Decontamination of the training data against the evaluation sets.
    dc = markers.get("data", {}).get("summary", {}).get("decontam") or {}
    if dc.get("enabled"):
        per = ", ".join(f"{k} {v}" for k, v in sorted(dc["per_set"].items()) if v) or "none of them"
        verb = "dropped" if dc["action"] == "drop" else "kept but flagged"
        blocks.append(("p", f"Decontamination: {_fmt(dc['checked'])} training documents checked for "
                            f"{dc['ngram']}-gram overlap with every evaluation set; {_fmt(dc['contaminated'])} "
                            f"{verb} ({per})."))

    # Training curves.
    curves = []
    for stage in ("pretrain", "sft", "dpo"):
        path = ctx.dir(stage) / "metrics.jsonl"
        if stage in markers and path.exists():
            name = _plot_training(stage, read_metrics(path), out)
            if name:
                curves.append((stage, name))
    if curves:
        blocks.append(("h", 2, "Training"))
        rows = []
        for stage in ("pretrain", "sft", "dpo"):
            s = markers.get(stage, {}).get("summary", {})
            if s:
                rows.append([stage, _fmt(s.get("steps")), _fmt(s.get("tokens")), _fmt(s.get("final_train_loss"), 4),
                             _fmt(s.get("final_val_loss"), 4), _fmt(s.get("tokens_per_s"), 0),
                             _fmt(s.get("mfu"), 4) if s.get("mfu") else "– (CPU)"])
        blocks.append(("table", ["stage", "steps", "tokens", "final train loss", "final val loss",
                                 "tokens/s (median)", "MFU"], rows))
        for stage, name in curves:
            blocks.append(("img", name, f"{stage}: loss, learning rate, tokens/s"))
        rows = []
        for stage in ("sft", "dpo"):
            s = markers.get(stage, {}).get("summary", {})
            before, after = s.get("before") or {}, s.get("after") or {}
            for key in before:
                if isinstance(before[key], int | float) and isinstance(after.get(key), int | float):
                    rows.append([stage, key, _fmt(before[key], 4), _fmt(after[key], 4)])
        if rows:
            blocks.append(("p", "Held-out metrics of the fine-tuning and alignment stages, on their own held-out "
                                "conversations / preference pairs, before and after training:"))
            blocks.append(("table", ["stage", "metric", "before", "after"], rows))

    # Samples before/after SFT and DPO.
    if ev and ev.get("samples"):
        blocks.append(("h", 2, "Sample generations before and after SFT / DPO"))
        blocks.append(("p", "Same prompts and seed for every model: plain text for the base model (sampled), a "
                            "user turn in the chat format after the system message for the fine-tuned ones (greedy)."))
        prompts = [s["prompt"] for s in next(iter(ev["samples"].values()))]
        for j, prompt in enumerate(prompts):
            blocks.append(("h", 3, f"Prompt: {prompt!r}"))
            blocks.append(("table", ["model", "completion"],
                           [[label, s[j]["completion"]] for label, s in ev["samples"].items() if j < len(s)]))

    blocks.append(("h", 2, "Position-scheme ablation"))
    ab = markers.get("ablation", {}).get("summary", {})
    if ab.get("schemes"):
        blocks.append(("p", f"The pretrain config retrained for {ab['steps']} steps with each position scheme "
                            "(same data, seed and schedule length); validation loss in nats per token."))
        blocks.append(("table", ["positions", "final val loss", "final train loss", "tokens/s (median)"],
                       [[k, _fmt(v["final_val_loss"], 4), _fmt(v["final_train_loss"], 4), _fmt(v["tokens_per_s"], 0)]
                        for k, v in ab["schemes"].items()]))
        name = _plot_ablation({k: read_metrics(ctx.dir("ablation") / k / "metrics.jsonl", "val")
                               for k in ab["schemes"]}, out)
        blocks.append(("img", name, "validation loss per position scheme"))
    else:
        blocks.append(("p", "Not run (set `ablation.pos_emb = [\"rope\", \"sinusoidal\", \"learned\"]` to retrain the "
                            "pretrain config briefly with each scheme of the model stage and compare)."))

    blocks.extend(_compare_blocks(markers.get("align_compare", {}).get("summary", {}), out))

    serve = markers.get("serve", {}).get("summary")
    if serve:
        c, ch = serve["completion"], serve["chat"]
        usage = c.get("usage") or {}
        rows = [["served model", serve["model_dir"]], ["startup (s)", _fmt(serve["startup_seconds"])],
                ["completion prompt", c["prompt"]], ["completion", f"{c['text']!r} ({c['finish_reason']}, "
                                                                   f"{usage.get('completion_tokens')} tokens, {c['seconds']} s)"],
                ["chat prompt", ch["prompt"]], ["chat reply", f"{ch['text']!r} ({ch['finish_reason']})"],
                ["serve it yourself", serve["serve_command"].rsplit(" port=", 1)[0] + " port=8000"]]
    for stage, title in (("quantize", "Quantized export"), ("export_hf", "Hugging Face export"),
                         ("serve", "Served completion (openai client)")):
        s = markers.get(stage, {}).get("summary")
        if s and stage == "serve":
            blocks.append(("h", 2, title))
            blocks.append(("p", "The server was started as a child process and queried with the official `openai` "
                                "Python client (`completions.create` and `chat.completions.create`, greedy)."))
            blocks.append(("table", ["", ""], rows))
        elif s:
            blocks.append(("h", 2, title))
            blocks.append(("table", ["key", "value"], [[k, _fmt(v, 4) if not isinstance(v, dict | list) else
                                                        json.dumps(v)[:300]] for k, v in s.items()]))

    # Post-mortem.
    blocks.append(("h", 2, "Post-mortem: where the time and memory went"))
    total = sum(markers[s]["seconds"] for s in order)
    rows = [[s, _fmt(markers[s]["seconds"], 1), f"{100 * markers[s]['seconds'] / max(total, 1e-9):.0f}%",
             _fmt(markers[s].get("peak_rss_mb"), 0), _fmt(markers[s].get("peak_cuda_mb"), 0)] for s in order]
    rows.append(["total", _fmt(total, 1), "100%", "", ""])
    blocks.append(("table", ["stage", "seconds", "share", "peak RSS (MB)", "peak GPU (MB)"], rows))
    if order:
        slow = max(order, key=lambda s: markers[s]["seconds"])
        big = max(order, key=lambda s: markers[s].get("peak_rss_mb") or 0)
        blocks.append(("p", f"{slow} took the most time ({_fmt(markers[slow]['seconds'], 1)} s, "
                            f"{100 * markers[slow]['seconds'] / max(total, 1e-9):.0f}% of {_fmt(total, 1)} s); "
                            f"memory peaked during {big} ({_fmt(markers[big].get('peak_rss_mb'), 0)} MB resident). "
                            "Times are of the last completed attempt of each stage; peak RSS is the whole process's "
                            "resident memory while the stage ran."))
        blocks.append(("img", _plot_bars(order, [markers[s]["seconds"] for s in order], "seconds per stage", "s",
                                         "time_per_stage.png", out), "time per stage"))
        facts.update(total_seconds=total, slowest=slow, peak_memory_stage=big)

    blocks.append(("h", 2, "Reproduce"))
    blocks.append(("table", ["", ""], [[k, v] for k, v in versions().items()]))
    config_path = ctx.run_dir / "pipeline.toml"
    if config_path.exists():
        blocks.append(("p", "The exact config (`pipeline.toml` in the run directory):"))
        blocks.append(("code", config_path.read_text(encoding="utf-8")))
    return blocks, facts


def _compare_blocks(summary: dict[str, Any], out: Path) -> list[Block]:
    """The alignment comparison (align/compare.py): its table and plot, or how to turn it on."""
    import shutil

    blocks: list[Block] = [("h", 2, "Alignment methods compared")]
    m = summary.get("metrics") or {}
    if not summary.get("enabled") or not m.get("results"):
        return [*blocks, ("p", "Not run (set `compare_alignment = true` to train DPO, PPO, GRPO and RLOO from the SFT "
                               "model against the answer checker and a learned reward model, at equal generated "
                               "tokens, and compare them here).")]
    blocks.append(("p", f"From the SFT model, each RL method sampled {_fmt(m['replies'])} replies "
                        f"(~{_fmt(m['budget_tokens'])} tokens: the SFT model's replies average "
                        f"{_fmt(m['sft_reply_tokens'], 1)} tokens) against each reward; DPO trained on as many "
                        f"sequences. Measured on {_fmt(m['heldout_prompts'])} held-out prompts: greedy task accuracy, "
                        "the learned reward model's mean score of the greedy replies, KL to the SFT model (nats per "
                        "sampled reply) and the perplexity of the reference replies."))
    rows = [[label, r.get("reward_used", ""), _fmt(r["task_accuracy"], 3), _fmt(r.get("rm_score"), 3),
             _fmt(r["kl"], 3), _fmt(r["heldout_ppl"], 3), _fmt(r.get("generated_tokens")), _fmt(r.get("seconds"), 0)]
            for label, r in m["results"].items()]
    blocks.append(("table", ["run", "reward", "task accuracy", "RM score", "KL to SFT", "held-out reply ppl",
                             "generated tokens", "seconds"], rows))
    plot = Path(summary.get("outputs", {}).get("plot", ""))
    if plot.is_file():
        shutil.copyfile(plot, out / "align_compare.png")
        blocks.append(("img", "align_compare.png", "training reward vs tokens sampled; held-out accuracy and KL"))
    return blocks


def _stage_order(ctx: Context) -> list[str]:
    return list(STAGE_NAMES)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------
# rendering


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", "⏎ ")


def to_markdown(blocks: list[Block]) -> str:
    lines: list[str] = []
    for b in blocks:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(map(_md_cell, b[1])) + " |")
            lines.append("|" + "---|" * len(b[1]))
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
        elif b[0] == "code":
            lines += ["```toml", b[1].rstrip("\n"), "```", ""]
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    parts = html.escape(str(text)).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: list[Block]) -> str:
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>scratchllm report</title><style>",
           "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
           "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;"
           "vertical-align:top;white-space:pre-wrap}pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}",
           "</style></head><body>"]
    for b in blocks:
        if b[0] == "h":
            out.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            out.append(f"<p>{_inline(b[1])}</p>")
        elif b[0] == "table":
            out.append("<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1]) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in b[2]]
            out.append("</table>")
        elif b[0] == "img":
            out.append(f"<p><img src='{html.escape(b[1])}' alt='{html.escape(b[2])}'></p>")
        elif b[0] == "code":
            out.append(f"<pre>{html.escape(b[1])}</pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(ctx: Context) -> dict[str, Any]:
    out = ctx.dir("report")
    out.mkdir(parents=True, exist_ok=True)
    blocks, facts = build_blocks(ctx, out)
    atomic_write_text(out / "report.md", to_markdown(blocks))
    atomic_write_text(out / "report.html", to_html(blocks))
    ctx.log(f"report: {out / 'report.md'} and {out / 'report.html'}")
    return {"files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")), **facts}
