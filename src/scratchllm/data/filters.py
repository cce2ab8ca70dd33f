"""Quality filters in the C4 / Gopher / FineWeb tradition, and PII scrubbing.

Each filter looks at one document and either keeps it or names why not. :class:`QualityFilters` runs
the enabled filters in a fixed order (cheap ones first) and counts, per filter, how many documents it
saw and how many it removed; a document is charged to the first filter that rejects it.

Thresholds default to the published ones (Gopher: Rae et al. 2021, appendix A; C4: Raffel et al.
2020; FineWeb: Penedo et al. 2024); see docs/data.md for what each one measures.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import accumulate, compress

import numpy as np

from scratchllm.data.config import FiltersConfig, PiiConfig

_WORD = re.compile(r"\w+")
_BULLETS = ("-", "*", "\u2022", "\u2023", "\u25cf", "\u25e6", "\u2043", "\u2219", "\u25aa", "\u25ab")
_ELLIPSES = ("...", "\u2026")
_TERMINAL_PUNCT = (".", "!", "?", '"', "'", "\u201d", "\u2019", ":", ";", ")")

# Frequent English function words: their density is a cheap, robust English detector.
ENGLISH_COMMON_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just may me
    might more most must my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there these
    they this those through to too under until up upon us very was we were what when where which while
    who whom why will with would you your yours yourself yourselves""".split()
)
_COMMON_ALPHA = frozenset(w for w in ENGLISH_COMMON_WORDS if w.isalpha())

_ASCII_LETTER = re.compile(r"[A-Za-z]")
# A whitespace-separated word with no ASCII letter (as str.split() splits: \s is str.isspace here).
_NO_LETTER_WORD = re.compile(r"(?<!\S)[^A-Za-z\s]++(?!\S)")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


class TextStats:
    """Features of one document, each computed at most once and shared by all filters."""

    def __init__(self, text: str) -> None:
        self.text = text

    @cached_property
    def words(self) -> list[str]:  # whitespace-separated, as in Gopher
        return self.text.split()

    @cached_property
    def lines(self) -> list[str]:  # non-empty lines, stripped
        return [s for line in self.text.split("\n") if (s := line.strip())]

    @cached_property
    def tokens(self) -> list[str]:  # lowercased \w+ runs, for n-gram and vocabulary statistics
        return _WORD.findall(self.text.lower())

    @cached_property
    def vocab(self) -> dict[str, int]:  # distinct token -> id, in order of first appearance
        return {t: i for i, t in enumerate(dict.fromkeys(self.tokens))}

    @cached_property
    def token_ids(self) -> np.ndarray:
        return np.fromiter(map(self.vocab.__getitem__, self.tokens), np.int32, len(self.tokens))

    @cached_property
    def token_counts(self) -> np.ndarray:  # occurrences per token id
        return np.bincount(self.token_ids, minlength=len(self.vocab))

    @cached_property
    def ngrams(self) -> NgramRepeats:
        return NgramRepeats(self.token_ids, list(accumulate(map(len, self.tokens), initial=0)))

    @cached_property
    def ngram_ranks(self) -> dict[int, np.ndarray]:  # n -> ranks, filled by dup_ngram_fraction
        return {}

    @cached_property
    def token_chars(self) -> int:
        return sum(map(len, self.tokens))


# ----------------------------------------------------------------------------------------------
# The filters. Each returns None to keep the document or a short reason to drop it.


def length_filter(c, s: TextStats) -> str | None:
    n = len(s.words)
    if n < c.min_words:
        return f"{n} words < {c.min_words}"
    if n > c.max_words:
        return f"{n} words > {c.max_words}"
    if len(s.text) < c.min_chars:
        return f"{len(s.text)} chars < {c.min_chars}"
    return None


def word_length_filter(c, s: TextStats) -> str | None:
    if not s.words:
        return "no words"
    mean = sum(map(len, s.words)) / len(s.words)
    if not c.min_mean <= mean <= c.max_mean:
        return f"mean word length {mean:.1f} outside [{c.min_mean}, {c.max_mean}]"
    return None


def symbol_filter(c, s: TextStats) -> str | None:
    if not s.words:
        return "no words"
    symbols = s.text.count("#") + s.text.count("...") + s.text.count("\u2026")
    if symbols / len(s.words) > c.max_symbol_word_ratio:
        return f"symbol/word ratio {symbols / len(s.words):.2f}"
    if s.lines:
        if sum(line.startswith(_BULLETS) for line in s.lines) / len(s.lines) > c.max_bullet_lines:
            return "mostly bullet lines"
        if sum(line.endswith(_ELLIPSES) for line in s.lines) / len(s.lines) > c.max_ellipsis_lines:
            return "many lines end with an ellipsis"
    if s.text.isascii():  # one regex pass over the text instead of a Python loop per word
        alpha = (len(s.words) - len(_NO_LETTER_WORD.findall(s.text))) / len(s.words)
    else:
        alpha = sum(any(ch.isalpha() for ch in w) for w in s.words) / len(s.words)
    if alpha < c.min_alpha_words:
        return f"only {alpha:.0%} of words contain a letter"
    return None


def _duplicate_fraction(items: list[str]) -> tuple[float, float]:
    """(fraction of items equal to an earlier item, fraction of characters in those items)."""
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    dup_n = dup_chars = 0
    for item in items:
        if item in seen:
            dup_n += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_n / len(items), dup_chars / max(1, sum(map(len, items)))


def top_ngram_fraction(tokens: list[str], n: int, total_chars: int) -> float:
    """Share of word characters taken by the most frequent n-gram (if it occurs more than once)."""
    if len(tokens) < n or not total_chars:
        return 0.0
    counts = Counter(zip(*(tokens[i:] for i in range(n)), strict=False))
    gram, count = counts.most_common(1)[0]
    return 0.0 if count < 2 else count * sum(map(len, gram)) / total_chars


def dup_ngram_fraction(tokens: list[str], n: int, total_chars: int, ids: np.ndarray | None = None,
                       ranks: dict[int, np.ndarray] | None = None) -> float:
    """Share of word characters covered by repeated occurrences of any n-gram (Gopher, as in datatrove).

    Vectorised and exact: every n-gram gets an integer rank (equal n-grams, equal ranks), built from
    the (n-1)-gram ranks and the next token with one integer ``np.unique`` per n (``ranks`` caches
    them across n). An n-gram repeats an earlier one iff its position is not the first of its rank;
    the words it spans are covered.
    """
    if len(tokens) < n or not total_chars:
        return 0.0
    if ids is None:
        ids = token_ids(tokens)
    rank = ngram_ranks(ids, n, ranks)
    _, first = np.unique(rank, return_index=True)
    repeat = np.ones(len(rank), bool)
    repeat[first] = False
    starts = np.flatnonzero(repeat)
    if not len(starts):
        return 0.0
    cover = np.zeros(len(tokens) + 1, np.int32)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    covered = np.cumsum(cover[:-1]) > 0
    lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
    return float(lengths[covered].sum()) / total_chars


def ngram_ranks(ids: np.ndarray, n: int, cache: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """rank[i] identifies the n-gram ids[i:i+n] exactly: equal n-grams have equal ranks (all < len(ids))."""
    cache = {} if cache is None else cache
    cache.setdefault(1, ids.astype(np.int64))
    k = max(m for m in cache if m <= n)
    rank = cache[k]
    while k < n:
        k += 1
        pair = rank[: len(ids) - k + 1] * np.int64(len(ids) + 1) + ids[k - 1 :].astype(np.int64)
        rank = np.unique(pair, return_inverse=True)[1].astype(np.int64).ravel()
        cache[k] = rank
    return rank


class NgramRepeats:
    """Per n, the n-grams of a token-id sequence that occur more than once, found incrementally.

    An n-gram can only repeat if its (n-1)-gram prefix does, so each step looks only at positions
    whose prefix repeats, a set that shrinks fast with n. Plain Python: for documents of a few
    thousand words this beats numpy, whose per-call overhead dominated. Gives exactly what
    :func:`top_ngram_fraction` and :func:`dup_ngram_fraction` give (tested against them).
    """

    def __init__(self, ids: np.ndarray, prefix_chars: list[int]) -> None:
        ids = np.asarray(ids, np.int64)
        self.ids = ids.tolist()
        self.prefix = prefix_chars  # prefix[i] = characters in tokens[:i]
        # n -> (positions whose n-gram repeats, ascending; their ranks; count per rank; first position per rank)
        self.levels: dict[int, tuple[list[int], list, list[int], list]] = {}
        # 1-grams: the rank is the id itself (counts and first positions per id, gaps: count 0)
        counts = np.bincount(ids) if len(ids) else np.zeros(0, np.int64)
        keep = counts[ids] >= 2
        earliest = dict(zip(reversed(self.ids), range(len(ids) - 1, -1, -1), strict=True))
        self.levels[1] = (np.flatnonzero(keep).tolist(), ids[keep].tolist(), counts.tolist(),
                          list(map(earliest.get, range(len(counts)))))

    def _set(self, n: int, pos, keys: list) -> None:
        # C-level maps and dict builds throughout: this runs ~10 times per document
        cnt = Counter(keys)
        keep = list(map((2).__le__, map(cnt.__getitem__, keys)))
        pos, keys = list(compress(pos, keep)), list(compress(keys, keep))
        order = dict.fromkeys(keys)  # distinct n-grams in order of first appearance
        index = {k: i for i, k in enumerate(order)}
        earliest = dict(zip(reversed(keys), reversed(pos)))  # the last write per key is its first position
        self.levels[n] = (pos, list(map(index.__getitem__, keys)), list(map(cnt.__getitem__, order)),
                          list(map(earliest.__getitem__, order)))

    def level(self, n: int) -> tuple[list[int], list[int], list[int], list[int]]:
        k = max(m for m in self.levels if m <= n)
        ids = self.ids
        while k < n:
            pos, rank, _, _ = self.levels[k]
            end = bisect_left(pos, len(ids) - k)  # room for one more token
            nxt = map(ids.__getitem__, map(k.__add__, pos[:end]))
            self._set(k + 1, pos[:end], list(zip(rank[:end], nxt)))
            k += 1
        return self.levels[n]

    def top_fraction(self, n: int, total_chars: int) -> float:
        """As :func:`top_ngram_fraction`: the most frequent n-gram, the earliest of equally frequent ones."""
        if len(self.ids) < n or not total_chars:
            return 0.0
        _, _, cnt, first = self.level(n)
        best = max(cnt, default=0)
        if best < 2:
            return 0.0
        at = min(f for c, f in zip(cnt, first, strict=True) if c == best)  # the earliest, as Counter.most_common
        return best * (self.prefix[at + n] - self.prefix[at]) / total_chars

    def dup_fraction(self, n: int, total_chars: int) -> float:
        """As :func:`dup_ngram_fraction`: characters covered by the non-first occurrences of repeated n-grams."""
        if len(self.ids) < n or not total_chars:
            return 0.0
        pos, rank, _, first = self.level(n)
        covered, end = 0, 0
        for p, r in zip(pos, rank, strict=True):
            if first[r] != p:  # a repeat: tokens p .. p+n-1 are covered (merge with the previous span)
                a = max(p, end)
                end = p + n
                covered += self.prefix[end] - self.prefix[a]
        return float(covered) / total_chars


def token_ids(tokens: list[str]) -> np.ndarray:
    """Each distinct token -> a small integer (order of first appearance)."""
    index: dict[str, int] = {}
    return np.fromiter((index.setdefault(t, len(index)) for t in tokens), np.int32, len(tokens))


def repetition_filter(c, s: TextStats) -> str | None:
    line_frac, line_chars = _duplicate_fraction(s.lines)
    if line_frac > c.max_dup_lines:
        return f"{line_frac:.0%} duplicate lines"
    if line_chars > c.max_dup_line_chars:
        return f"{line_chars:.0%} of characters in duplicate lines"
    paragraphs = [p.strip() for p in _PARAGRAPH_BREAK.split(s.text) if p.strip()]
    para_frac, para_chars = _duplicate_fraction(paragraphs)
    if para_frac > c.max_dup_paragraphs:
        return f"{para_frac:.0%} duplicate paragraphs"
    if para_chars > c.max_dup_paragraph_chars:
        return f"{para_chars:.0%} of characters in duplicate paragraphs"
    for n, limit in sorted(c.max_top_ngram.items(), key=lambda kv: int(kv[0])):
        frac = s.ngrams.top_fraction(int(n), s.token_chars)
        if frac > limit:
            return f"top {n}-gram covers {frac:.0%}"
    for n, limit in sorted(c.max_dup_ngram.items(), key=lambda kv: int(kv[0])):
        frac = s.ngrams.dup_fraction(int(n), s.token_chars)
        if frac > limit:
            return f"repeated {n}-grams cover {frac:.0%}"
    return None


def stopword_filter(c, s: TextStats) -> str | None:
    ids, counts = s.vocab, s.token_counts  # per distinct token, not per occurrence
    count = sum(int(counts[ids[w]]) for w in set(c.words) if w in ids)
    return None if count >= c.min_count else f"{count} stop words < {c.min_count}"


def language_filter(c, s: TextStats) -> str | None:
    if s.text.isascii():  # the common case, without a Python loop per character: every letter is Latin
        if not _ASCII_LETTER.search(s.text):
            return "no letters"
        latin = 1.0
    else:
        letters = [ch for ch in s.text if ch.isalpha()]
        if not letters:
            return "no letters"
        latin = sum(ch < "\u0250" for ch in letters) / len(letters)  # Basic Latin .. Latin Extended-B
    if latin < c.min_latin:
        return f"only {latin:.0%} Latin letters"
    counts = s.token_counts.tolist()  # per distinct token (vocab order), not per occurrence
    words = sum(compress(counts, map(str.isalpha, s.vocab)))
    common = sum(compress(counts, map(_COMMON_ALPHA.__contains__, s.vocab))) / max(1, words)
    if common < c.min_common_words:
        return f"English function-word share {common:.0%} < {c.min_common_words:.0%}"
    return None


def line_filter(c, s: TextStats) -> str | None:
    lowered = s.text.lower()
    for phrase in c.bad_phrases:
        if phrase.lower() in lowered:
            return f"contains {phrase!r}"
    if not s.lines:
        return "no lines"
    punct = sum(line.endswith(_TERMINAL_PUNCT) for line in s.lines) / len(s.lines)
    if punct < c.min_punct_lines:
        return f"only {punct:.0%} of lines end in punctuation"
    short = sum(len(line) < 30 for line in s.lines) / len(s.lines)
    if short > c.max_short_lines:
        return f"{short:.0%} short lines"
    return None


def code_filter(c, s: TextStats) -> str | None:
    lengths = [len(line) for line in s.text.split("\n")]
    if max(lengths) > c.max_line_length:
        return f"a line of {max(lengths)} characters"
    if sum(lengths) / len(lengths) > c.max_mean_line_length:
        return "long lines on average (minified?)"
    alnum = sum(ch.isalnum() for ch in s.text) / max(1, len(s.text))
    if alnum < c.min_alnum_fraction:
        return f"only {alnum:.0%} alphanumeric characters"
    return None


FILTERS: dict[str, Callable[..., str | None]] = {
    "length": length_filter,
    "word_length": word_length_filter,
    "symbols": symbol_filter,
    "stopwords": stopword_filter,
    "language": language_filter,
    "lines": line_filter,
    "code": code_filter,
    "repetition": repetition_filter,  # the most expensive, so last
}


@dataclass
class FilterCount:
    seen: int = 0
    removed: int = 0


class QualityFilters:
    """Run the enabled filters; ``stats[name]`` counts documents seen and removed by each."""

    def __init__(self, cfg: FiltersConfig) -> None:
        self.active = [(name, fn, getattr(cfg, name)) for name, fn in FILTERS.items() if getattr(cfg, name).enabled]
        self.stats = {name: FilterCount() for name, _, _ in self.active}

    def check(self, text: str, domain: str) -> str | None:
        """None if the document passes every filter, else ``"<filter>: <reason>"``."""
        s = TextStats(text)
        for name, fn, c in self.active:
            if c.domains and domain not in c.domains:
                continue
            count = self.stats[name]
            count.seen += 1
            reason = fn(c, s)
            if reason is not None:
                count.removed += 1
                return f"{name}: {reason}"
        return None


# ----------------------------------------------------------------------------------------------
# PII

EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}\b"
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\.?\d)(?!\w)")
_DIGIT_DOT_DIGIT = re.compile(r"\d\.\d")
_IPV6_HINT = re.compile(r":[0-9A-Fa-f]{0,4}:")  # every IPv6 candidate holds two colons this close
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])")


@dataclass
class PiiStats:
    documents: int = 0  # documents with at least one replacement
    emails: int = 0
    ips: int = 0


class PiiScrubber:
    """Replace e-mail addresses and public (globally routable) IP addresses with fixed placeholders.

    Private, loopback and documentation addresses (192.168.x.x, 127.0.0.1, 2001:db8::) are not
    personal data and are left alone.
    """

    def __init__(self, cfg: PiiConfig) -> None:
        self.cfg = cfg
        self.stats = PiiStats()

    def __call__(self, text: str, domain: str) -> str:
        cfg = self.cfg
        if not cfg.enabled or (cfg.domains and domain not in cfg.domains):
            return text
        emails = ips = 0
        if cfg.emails and "@" in text:
            text, emails = EMAIL.subn(cfg.email_replacement, text)
        # an IPv4 match holds "<digit>.<digit>"; an IPv6 candidate is tested below
        if cfg.ips and (_DIGIT_DOT_DIGIT.search(text) or "::" in text or text.count(":") >= 7):
            counter = [0]

            def public(m: re.Match[str]) -> str:
                try:
                    address = ipaddress.ip_address(m.group(0))
                except ValueError:
                    return m.group(0)
                if isinstance(address, ipaddress.IPv6Address) and m.group(0).count(":") < 2:
                    return m.group(0)
                if not address.is_global:
                    return m.group(0)
                counter[0] += 1
                return cfg.ip_replacement

            if _DIGIT_DOT_DIGIT.search(text):
                text = IPV4.sub(public, text)
            if ("::" in text or text.count(":") >= 7) and _IPV6_HINT.search(text):
                text = _IPV6_CANDIDATE.sub(lambda m: public(m) if _ipv6_groups(m.group(0)) >= 3 else m.group(0), text)
            ips = counter[0]
        if emails or ips:
            self.stats.documents += 1
            self.stats.emails += emails
            self.stats.ips += ips
        return text


def _ipv6_groups(s: str) -> int:
    return sum(1 for g in s.split(":") if g)
