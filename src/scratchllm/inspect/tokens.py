"""``inspect tokens``: a text with its token boundaries coloured, bytes per token, vocabulary usage and the
most frequent tokens over a corpus, and the same text under a second tokenizer side by side."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from scratchllm.errors import ScratchError
from scratchllm.inspect import report
from scratchllm.inspect.config import DEFAULT_TEXT, TokensConfig  # noqa: F401 - DEFAULT_TEXT: importable here too
from scratchllm.inspect.load import find_tokenizer, load_tokenizer
from scratchllm.io import read_text
from scratchllm.stage import StageResult


def pieces(tok: Any, ids: list[int]) -> list[str]:
    """Each token's bytes as text; bytes that are only part of a UTF-8 character show as \\xNN."""
    return [tok.id_to_bytes(i).decode("utf-8", errors="backslashreplace") for i in ids]


def text_stats(tok: Any, text: str) -> dict[str, Any]:
    ids = tok.encode_ordinary(text)
    n_bytes = len(text.encode("utf-8"))
    return {"ids": ids, "pieces": pieces(tok, ids), "tokens": len(ids), "bytes": n_bytes,
            "bytes_per_token": n_bytes / max(1, len(ids))}


def corpus_stats(tok: Any, paths: list[str], max_bytes: int) -> dict[str, Any]:
    counts: Counter[int] = Counter()
    n_bytes = 0
    for p in tqdm(paths, desc="encoding corpus", unit="file", disable=len(paths) < 2):
        text = read_text(p)
        raw = text.encode("utf-8")
        if n_bytes + len(raw) > max_bytes:  # cut at a character boundary
            text = raw[: max_bytes - n_bytes].decode("utf-8", errors="ignore")
        n_bytes += len(text.encode("utf-8"))
        counts.update(tok.encode_ordinary(text))
        if n_bytes >= max_bytes:
            break
    n_tokens = sum(counts.values())
    return {"counts": counts, "bytes": n_bytes, "tokens": n_tokens, "bytes_per_token": n_bytes / max(1, n_tokens),
            "used": len(counts), "vocab_size": tok.vocab_size}


def _layout(piece_list: list[str], width: int = 60) -> list[tuple[int, float, str]]:
    """(line, x, shown text) per token: monospace lines of about `width` characters."""
    x, line, out = 0.0, 0, []
    for piece in piece_list:
        shown = piece.replace("\n", "↵").replace("\t", "→")
        if x + len(shown) > width and x > 0:
            x, line = 0.0, line + 1
        out.append((line, x, shown))
        x += len(shown) + 0.6
    return out


def _draw_tokens(ax: Any, piece_list: list[str], title: str, width: int = 60) -> None:
    """Token pieces each on a coloured box, so that the boundaries show."""
    ax.set_axis_off()
    ax.set_title(title, loc="left", fontsize=10)
    placed = _layout(piece_list, width)
    for i, (line, x, shown) in enumerate(placed):
        ax.text(x, -line, shown, family="monospace", fontsize=9, va="center", ha="left",
                bbox={"boxstyle": "square,pad=0.15", "fc": report.TOKEN_COLOURS[i % len(report.TOKEN_COLOURS)],
                      "ec": "none"})
    ax.set_xlim(-0.5, width + 2)
    ax.set_ylim(-(placed[-1][0] if placed else 0) - 0.7, 0.7)


def run(cfg: TokensConfig) -> StageResult:
    """Write tokens.png and tokens.html under cfg.out_dir; metrics: the figures the summary reports
    (``metrics["summary"]``: the summary's text, as the command prints it)."""
    cfg.require_inputs()
    text = read_text(cfg.text_file) if cfg.text_file else cfg.text
    if not text:
        raise ScratchError("the text to tokenize is empty", "pass text='some words' (--text) or text_file=FILE")
    tok = load_tokenizer(_tokenizer_path(cfg.tokenizer))
    other = load_tokenizer(_tokenizer_path(cfg.compare)) if cfg.compare else None
    out = Path(cfg.out_dir)
    stats = text_stats(tok, text)
    other_stats = text_stats(other, text) if other else None
    corpus = corpus_stats(tok, cfg.corpus, cfg.max_corpus_bytes) if cfg.corpus else None
    other_corpus = corpus_stats(other, cfg.corpus, cfg.max_corpus_bytes) if cfg.corpus and other else None

    plt = report.pyplot()
    heights = [0.6 + 0.3 * (_layout(stats["pieces"])[-1][0] + 1)]
    if other is not None:
        heights.append(0.6 + 0.3 * (_layout(other_stats["pieces"])[-1][0] + 1))
    if corpus is not None:
        heights.append(0.25 * cfg.top + 0.8)
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    _draw_tokens(axes[0][0], stats["pieces"], f"{cfg.tokenizer}: {stats['tokens']} tokens, "
                                              f"{stats['bytes_per_token']:.2f} bytes/token (vocab {tok.vocab_size})")
    if other is not None:
        _draw_tokens(axes[1][0], other_stats["pieces"],
                     f"{cfg.compare}: {other_stats['tokens']} tokens, "
                     f"{other_stats['bytes_per_token']:.2f} bytes/token (vocab {other.vocab_size})")
    if corpus is not None:
        ax = axes[-1][0]
        top = corpus["counts"].most_common(cfg.top)
        labels = [repr(pieces(tok, [i])[0]) for i, _ in top]  # quoted: leading spaces show
        ax.barh(range(len(top))[::-1], [c / corpus["tokens"] for _, c in top], color="#60a5fa")
        ax.set_yticks(range(len(top))[::-1], labels, family="monospace", fontsize=8)
        ax.set_xlabel("share of corpus tokens")
        ax.set_title(f"most frequent tokens; {corpus['used']}/{corpus['vocab_size']} of the vocabulary used, "
                     f"{corpus['bytes_per_token']:.2f} bytes/token over {corpus['bytes']:,} bytes", loc="left",
                     fontsize=10)
    png = report.save_figure(fig, out / "tokens.png")

    sections = [("Token boundaries", f"<p>{cfg.tokenizer}: {stats['tokens']} tokens for {stats['bytes']} bytes "
                                     f"= <b>{stats['bytes_per_token']:.2f} bytes per token</b> (vocabulary "
                                     f"{tok.vocab_size}). Hover a token for its id.</p>"
                                     + report.token_spans(stats["pieces"], stats["ids"]))]
    if other is not None:
        sections.append((f"The same text under {cfg.compare}",
                         f"<p>{other_stats['tokens']} tokens = <b>{other_stats['bytes_per_token']:.2f} bytes per "
                         f"token</b> (vocabulary {other.vocab_size}).</p>"
                         + report.token_spans(other_stats["pieces"], other_stats["ids"])))
    if corpus is not None:
        rows = [[i, repr(pieces(tok, [i])[0]), c, f"{100 * c / corpus['tokens']:.2f}%"]
                for i, c in corpus["counts"].most_common(cfg.top)]
        usage = (f"<p>{corpus['bytes']:,} bytes of {', '.join(map(report.esc, cfg.corpus))} encode to "
                 f"{corpus['tokens']:,} tokens ({corpus['bytes_per_token']:.2f} bytes/token); "
                 f"{corpus['used']} of {corpus['vocab_size']} tokens "
                 f"({100 * corpus['used'] / corpus['vocab_size']:.1f}%) appear at least once.")
        if other_corpus:
            usage += (f" {cfg.compare}: {other_corpus['tokens']:,} tokens ({other_corpus['bytes_per_token']:.2f} "
                      f"bytes/token), {other_corpus['used']} of {other_corpus['vocab_size']} used.")
        sections.append(("Vocabulary usage over the corpus", usage + "</p>" + report.table(
            ["id", "token", "count", "share"], rows)))
    sections.append(("Figure", report.img(png, "token boundaries")))
    report.write_page(out / "tokens.html", "inspect tokens", sections)

    lines = [f"{stats['tokens']} tokens, {stats['bytes_per_token']:.2f} bytes/token: "
             + "|".join(p.replace("\n", "\\n") for p in stats["pieces"])]
    if other_stats:
        lines.append(f"{cfg.compare}: {other_stats['tokens']} tokens, {other_stats['bytes_per_token']:.2f} bytes/token")
    if corpus:
        lines.append(f"corpus: {corpus['tokens']:,} tokens, {corpus['bytes_per_token']:.2f} bytes/token, "
                     f"{corpus['used']}/{corpus['vocab_size']} of the vocabulary used")
    lines.append(f"wrote {out / 'tokens.png'} and {out / 'tokens.html'}")
    metrics: dict[str, Any] = {"tokens": stats["tokens"], "bytes": stats["bytes"],
                               "bytes_per_token": stats["bytes_per_token"], "vocab_size": tok.vocab_size}
    if other_stats:
        metrics["compare"] = {"tokens": other_stats["tokens"], "bytes_per_token": other_stats["bytes_per_token"],
                              "vocab_size": other.vocab_size}
    if corpus:
        metrics["corpus"] = {k: corpus[k] for k in ("bytes", "tokens", "bytes_per_token", "used", "vocab_size")}
    metrics["summary"] = "\n".join(lines)
    return StageResult(outputs={"png": out / "tokens.png", "html": out / "tokens.html"}, metrics=metrics)


def _tokenizer_path(path: str) -> Path:
    """A tokenizer directory/file, or a model directory / training run holding one."""
    p = Path(path)
    if p.is_dir() and (p / "config.json").is_file() and not any(p.glob("tokenizer*.json")):
        return find_tokenizer(p, None)
    return p
