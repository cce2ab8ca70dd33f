"""``inspect attention``: every layer's and head's attention weights for one sentence, as heatmaps with the
causal mask visible, and per-head summaries (previous token, first token, entropy, induction).

The weights come from the model's explicit-math attention path (softmax(QK^T/sqrt(d))), switched on
for this one forward pass: they are the numbers the model computes, not a re-implementation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.inspect import report
from scratchllm.inspect.config import DEFAULT_SENTENCE, AttentionConfig  # noqa: F401 - importable here too
from scratchllm.inspect.load import load_model_and_tokenizer
from scratchllm.io import read_text
from scratchllm.stage import StageResult


@torch.no_grad()
def attention_maps(model: Any, ids: list[int]) -> list[torch.Tensor]:
    """Attention weights (n_heads, T, T) of each layer for the sequence ids, from the math path."""
    T = len(ids)
    if T > model.cfg.context_length:
        raise ScratchError(f"the sentence is {T} tokens long but the model's context is {model.cfg.context_length}",
                           "pass a shorter sentence (--sentence)")
    attns = [layer.attn for layer in model.layers]
    saved = [a.impl for a in attns]
    try:
        for a in attns:
            a.impl, a.record_probs = "math", True
        model(torch.tensor([ids], device=model.tok_emb.weight.device))
        return [a.probs[0].float().cpu() for a in attns]
    finally:
        for a, impl in zip(attns, saved):
            a.impl, a.record_probs = impl, False
            a.probs = None


def head_summary(p: torch.Tensor, ids: list[int]) -> dict[str, float | None]:
    """For one head's (T, T) weights: mean attention to the previous token and to the first token (over
    positions >= 1), mean entropy in bits, and the induction score: attention from a repeated token to
    the token that followed its earlier occurrence (None when no token repeats)."""
    T = p.size(0)
    rows = range(1, T)
    prev = sum(float(p[t, t - 1]) for t in rows) / max(1, T - 1)
    first = sum(float(p[t, 0]) for t in rows) / max(1, T - 1)
    ent = float(-(p * p.clamp(min=1e-12).log2()).sum(-1).mean())
    targets = []
    for t in range(T):
        earlier = [j for j in range(t - 1) if ids[j] == ids[t]]  # j + 1 < t: a real look-back
        if earlier:
            targets.append(float(p[t, earlier[-1] + 1]))
    return {"prev": prev, "first": first, "entropy": ent,
            "induction": sum(targets) / len(targets) if targets else None}


def head_role(s: dict[str, float | None]) -> str:
    if s["induction"] is not None and s["induction"] > 0.3:
        return "induction"
    if s["prev"] > 0.4:
        return "previous-token"
    if s["first"] > 0.5:
        return "first-token (sink)"
    if s["entropy"] < 0.5:
        return "sharp"
    return ""


def run(cfg: AttentionConfig) -> StageResult:
    """Write attention.png and attention.html under cfg.out_dir; metrics: the per-head figures the summary
    reports (``metrics["summary"]``: the summary's text, as the command prints it)."""
    cfg.require_inputs()
    model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer or None)
    sentence = read_text(cfg.sentence_file) if cfg.sentence_file else cfg.sentence
    if not sentence:
        raise ScratchError("the sentence is empty", "pass sentence='some words' (--sentence)")
    ids = ([tok.bos_id] if cfg.bos else []) + tok.encode_ordinary(sentence)
    maps = attention_maps(model, ids)
    labels = [tok.id_to_bytes(i).decode("utf-8", "backslashreplace") for i in ids]
    labels = [repr(x)[1:-1] if i not in tok.special_tokens.values() else x for x, i in zip(labels, ids)]
    T, L, H = len(ids), len(maps), maps[0].size(0)
    out = Path(cfg.out_dir)

    plt = report.pyplot()
    cell = max(1.6, min(3.2, 0.18 * T))
    fig, axes = plt.subplots(L, H, figsize=(cell * H + 1, cell * L + 0.6), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#d1d5db")  # the causal mask (future positions) in grey
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    show_ticks = T <= 24
    for l, probs in enumerate(maps):
        for h in range(H):
            ax = axes[l][h]
            ax.imshow(probs[h].masked_fill(future, float("nan")).numpy(), cmap=cmap, vmin=0, vmax=1)
            ax.set_title(f"L{l} H{h}", fontsize=7)
            if show_ticks and h == 0:
                ax.set_yticks(range(T), labels, fontsize=5, family="monospace")
            else:
                ax.set_yticks([])
            if show_ticks and l == L - 1:
                ax.set_xticks(range(T), labels, fontsize=5, family="monospace", rotation=90)
            else:
                ax.set_xticks([])
    fig.suptitle(f"attention weights (rows: query, columns: key; grey: masked future) - {cfg.model}", fontsize=9)
    png = report.save_figure(fig, out / "attention.png")

    rows, lines, heads = [], [], []
    for l, probs in enumerate(maps):
        for h in range(H):
            s = head_summary(probs[h], ids)
            role = head_role(s)
            ind = "-" if s["induction"] is None else f"{s['induction']:.2f}"
            rows.append([f"L{l} H{h}", f"{s['prev']:.2f}", f"{s['first']:.2f}", f"{s['entropy']:.2f}", ind, role])
            heads.append({"layer": l, "head": h, **s, "role": role})
            if role:
                lines.append(f"layer {l} head {h}: {role} (prev {s['prev']:.2f}, first {s['first']:.2f}, "
                             f"entropy {s['entropy']:.2f} bits, induction {ind})")
    tokens_html = report.token_spans(labels, ids)
    sections = [("Sentence", f"<p>{T} tokens; {L} layers x {H} heads.</p>" + tokens_html),
                ("Per-head summary", "<p class='note'>prev / first: mean attention to the previous and to the "
                                     "first token; entropy in bits (0 = all on one token, log2 T = uniform); "
                                     "induction: attention from a repeated token to the token after its earlier "
                                     "occurrence (repeat a phrase in the sentence to measure it).</p>"
                 + report.table(["head", "prev", "first", "entropy", "induction", "looks like"], rows)),
                ("Heatmaps", report.img(png, "attention heatmaps"))]
    report.write_page(out / "attention.html", "inspect attention", sections)
    uniform = math.log2(T) if T > 1 else 0.0
    head = f"{T} tokens, {L} layers x {H} heads (uniform attention would be {uniform:.2f} bits)"
    summary = "\n".join([head, *(lines or ["no head stands out (attention is diffuse, as in an untrained or "
                                           "briefly trained model)"]),
                         f"wrote {out / 'attention.png'} and {out / 'attention.html'}"])
    return StageResult(outputs={"png": out / "attention.png", "html": out / "attention.html"},
                       metrics={"tokens": T, "layers": L, "heads": H, "uniform_entropy": uniform, "per_head": heads,
                                "summary": summary})
