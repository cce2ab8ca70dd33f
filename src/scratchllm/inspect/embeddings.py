"""``inspect embeddings``: the token embedding table in 2-D, coloured by token kind; nearest neighbours by
cosine similarity; analogies (a - b + c); before vs after training when given two checkpoints."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.inspect import report
from scratchllm.inspect.config import EmbeddingsConfig
from scratchllm.inspect.load import check_match, load_model, load_model_and_tokenizer
from scratchllm.stage import StageResult

KINDS = ("letters", "digits", "punctuation", "code", "whitespace", "bytes", "special")
KIND_COLOURS = {"letters": "#2563eb", "digits": "#16a34a", "punctuation": "#f59e0b", "code": "#dc2626",
                "whitespace": "#9ca3af", "bytes": "#a855f7", "special": "#111827"}
CODE_CHARS = set("{}[]()<>;=_\\/#$@`|&*+^~%")


def pca(x: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the rows of x onto its top-k principal components; returns (coords (n, k), explained variance ratio).

    Eigen-decomposition of the covariance matrix (d x d, small next to n). Signs are fixed so that each
    component's largest loading is positive: PCA is only defined up to sign, and a fixed sign keeps
    before/after plots comparable.
    """
    x = x.double()
    xc = x - x.mean(0, keepdim=True)
    cov = xc.T @ xc / max(1, x.size(0) - 1)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    order = evals.argsort(descending=True)[:k]
    comps = evecs[:, order]
    signs = torch.sign(comps.gather(0, comps.abs().argmax(0, keepdim=True)))
    comps = comps * signs
    ratio = evals[order] / evals.clamp(min=0).sum()
    return (xc @ comps).float(), ratio.float()


def project(x: torch.Tensor, method: str) -> torch.Tensor:
    if method == "pca":
        return pca(x)[0]
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise ScratchError("--method tsne needs scikit-learn", "pip install scikit-learn, or use --method pca")
        return torch.from_numpy(TSNE(2, init="pca", random_state=0, perplexity=min(30, len(x) - 1))
                                .fit_transform(x.numpy())).float()
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise ScratchError("--method umap needs umap-learn", "pip install umap-learn, or use --method pca")
        return torch.from_numpy(umap.UMAP(random_state=0).fit_transform(x.numpy())).float()
    raise ScratchError(f"unknown projection method {method!r}", "use pca, tsne or umap")


def token_kind(raw: bytes, special: bool = False) -> str:
    """letters, digits, punctuation, code, whitespace, bytes (not whole UTF-8 characters) or special."""
    if special:
        return "special"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes"
    core = text.strip()
    if not core:
        return "whitespace"
    if core.isdigit():
        return "digits"
    if core.isalpha():
        return "letters"
    if any(c in CODE_CHARS for c in core) or (any(c.isalnum() for c in core)):
        return "code"  # brackets, operators, identifiers_with_underscores, mixed symbols and words
    if all(c in string.punctuation or not c.isalnum() for c in core):
        return "punctuation"
    return "code"


def token_id(tok: Any, text: str) -> int:
    """The id of a single token given as its exact text (leading space included) or as #ID."""
    if text.startswith("#") and text[1:].isdigit():
        i = int(text[1:])
        if not 0 <= i < tok.vocab_size:
            raise ScratchError(f"token id {i} is not in the vocabulary (0..{tok.vocab_size - 1})",
                               "pass an id below the vocabulary size")
        return i
    if text in tok.special_tokens:
        return tok.special_tokens[text]
    ids = tok.encode_ordinary(text)
    if len(ids) != 1:
        shown = "|".join(tok.id_to_bytes(i).decode("utf-8", "backslashreplace") for i in ids)
        raise ScratchError(f"{text!r} is not a single token in the vocabulary: it encodes to {len(ids)} tokens "
                           f"({shown})",
                           "pick a token that exists (see 'scratchllm inspect tokens'); mind the leading space, "
                           "e.g. ' the', or pass an id as #123")
    return ids[0]


def neighbours(emb: torch.Tensor, query: torch.Tensor, k: int, exclude: set[int]) -> list[tuple[int, float]]:
    """The k rows of emb closest to query by cosine similarity, skipping ids in exclude."""
    sims = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(query, dim=0)
    order = sims.argsort(descending=True).tolist()
    return [(i, float(sims[i])) for i in order if i not in exclude][:k]


def _label(tok: Any, i: int) -> str:
    return repr(tok.id_to_bytes(i).decode("utf-8", "backslashreplace"))


def run(cfg: EmbeddingsConfig) -> StageResult:
    """Write embeddings.png and embeddings.html under cfg.out_dir; metrics: the figures the summary reports
    (``metrics["summary"]``: the summary's text, as the command prints it)."""
    cfg.require_inputs()
    model, tok = load_model_and_tokenizer(cfg.model, cfg.tokenizer or None)
    n = tok.vocab_size
    specials = set(tok.special_tokens.values())
    kinds = [token_kind(tok.id_to_bytes(i), i in specials) for i in range(n)]
    tables = {"after": model.tok_emb.weight.detach()[:n].float()}
    if cfg.before:
        before = load_model(cfg.before)
        check_match(before, tok)
        if before.tok_emb.weight.shape != model.tok_emb.weight.shape:
            raise ScratchError(f"{cfg.before} and {cfg.model} have different embedding shapes "
                               f"{tuple(before.tok_emb.weight.shape)} vs {tuple(model.tok_emb.weight.shape)}",
                               "--before must be an earlier checkpoint of the same model")
        tables = {"before": before.tok_emb.weight.detach()[:n].float(), **tables}
    query_ids = [token_id(tok, t) for t in cfg.tokens]
    analogy_ids = [tuple(token_id(tok, t) for t in a) for a in cfg.analogies]
    out = Path(cfg.out_dir)

    plt = report.pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(7 * len(tables), 6), squeeze=False)
    ratios = {}
    for ax, (name, emb) in zip(axes[0], tables.items()):
        xy = project(emb, cfg.method)
        if cfg.method == "pca":
            ratios[name] = pca(emb)[1]
        for kind in KINDS:
            idx = [i for i in range(n) if kinds[i] == kind]
            if idx:
                ax.scatter(xy[idx, 0], xy[idx, 1], s=6, alpha=0.6, c=KIND_COLOURS[kind], label=f"{kind} ({len(idx)})")
        for i in query_ids:
            ax.annotate(_label(tok, i), (float(xy[i, 0]), float(xy[i, 1])), fontsize=8, weight="bold")
        title = f"{name}: token embeddings, {cfg.method.upper()}"
        if name in ratios:
            title += f" ({100 * float(ratios[name].sum()):.1f}% of variance)"
        ax.set_title(title if len(tables) > 1 else f"{cfg.model}: {title[len(name) + 2:]}", fontsize=10)
        ax.legend(fontsize=7, markerscale=2)
    png = report.save_figure(fig, out / "embeddings.png")

    emb = tables["after"]
    nn_rows, lines, near_by_token, analogy_results = [], [], {}, {}
    for t, i in zip(cfg.tokens, query_ids):
        for name, table in tables.items():
            near = neighbours(table, table[i], cfg.k, {i})
            shown = ", ".join(f"{_label(tok, j)} {s:.2f}" for j, s in near)
            nn_rows.append([repr(t), name, shown])
            near_by_token.setdefault(t, {})[name] = [[_label(tok, j), s] for j, s in near]
            lines.append(f"{t!r}{' (' + name + ')' if len(tables) > 1 else ''}: {shown}")
    an_rows = []
    for (a, b, c), ids in zip(cfg.analogies, analogy_ids):
        near = neighbours(emb, emb[ids[0]] - emb[ids[1]] + emb[ids[2]], 5, set(ids))
        shown = ", ".join(f"{_label(tok, j)} {s:.2f}" for j, s in near)
        an_rows.append([f"{a!r} - {b!r} + {c!r}", shown])
        analogy_results[f"{a} - {b} + {c}"] = [[_label(tok, j), s] for j, s in near]
        lines.append(f"{a!r} - {b!r} + {c!r} = {shown}")
    counts = {k: kinds.count(k) for k in KINDS if kinds.count(k)}
    sections = [("Projection", f"<p>{n} token embeddings (d_model={emb.size(1)}) projected with "
                               f"{cfg.method.upper()}, coloured by kind: "
                               + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".</p>" + report.img(png, "embeddings"))]
    if nn_rows:
        sections.append(("Nearest neighbours (cosine)", report.table(["token", "table", "neighbours"], nn_rows)))
    if an_rows:
        sections.append(("Analogies: a - b + c", "<p class='note'>Small models trained briefly rarely solve "
                                                  "analogies; the nearest tokens show what the space has learned."
                                                  "</p>" + report.table(["query", "nearest"], an_rows)))
    report.write_page(out / "embeddings.html", "inspect embeddings", sections)
    head = f"{n} embeddings of size {emb.size(1)}; kinds: " + ", ".join(f"{k} {v}" for k, v in counts.items())
    if ratios:
        head += "; PCA explains " + ", ".join(f"{k} {100 * float(r.sum()):.1f}%" for k, r in ratios.items())
    metrics = {"embeddings": n, "d_model": emb.size(1), "kinds": counts,
               "pca_explained": {k: float(r.sum()) for k, r in ratios.items()}, "neighbours": near_by_token,
               "analogies": analogy_results,
               "summary": "\n".join([head, *lines, f"wrote {out / 'embeddings.png'} and {out / 'embeddings.html'}"])}
    return StageResult(outputs={"png": out / "embeddings.png", "html": out / "embeddings.html"}, metrics=metrics)
