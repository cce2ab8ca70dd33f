from __future__ import annotations

from scratchllm.corpus.clean import Cleaner
from scratchllm.corpus.config import CleanConfig
from scratchllm.data.config import FiltersConfig, PiiConfig
from scratchllm.data.filters import (
    PiiScrubber, QualityFilters, TextStats, dup_ngram_fraction, repetition_filter, top_ngram_fraction,
)

GOOD = (
    "The river runs past the old mill and into the valley, where the farmers have planted wheat with care. "
    "In spring the water is high and cold, and the children are told to stay away from the bank. "
    "By summer it is slow and warm, and the same children spend whole afternoons in it, catching small fish "
    "that they let go again before dinner. Nobody remembers who built the mill, but everyone agrees that it "
    "should be repaired before the roof falls in.\n"
)


def test_clean_normalises_unicode_controls_and_whitespace():
    c = Cleaner(CleanConfig(boilerplate=["cookie policy", r"^\s*share this"], boilerplate_domains=["prose"]))
    text = "Cafe\u0301\u00a0ok\x07\u200b  \r\nline two\t \r\n\n\n\n\nShare this page\nRead our Cookie Policy.\nend"
    assert c(text, "prose") == "Caf\u00e9 ok\nline two\n\n\nend\n"
    assert c.stats.boilerplate_lines == 2 and c.stats.changed == 1
    # boilerplate rules only for the listed domains; indentation (code) is kept
    assert c("  share this = 1\n\tx = 2\n", "code") == "  share this = 1\n\tx = 2\n"
    assert c("\x00\x01 \n\u200b", "prose") == "" and c.stats.emptied == 1
    assert Cleaner(CleanConfig(unicode="NFKC"))("\ufb01ne \u2460", "prose") == "fine 1\n"


def run(cfg: FiltersConfig, text: str, domain: str = "prose"):
    f = QualityFilters(cfg)
    return f.check(text, domain), f.stats


def test_good_prose_passes_every_filter():
    more = (
        "\nWhen the autumn rains come, the road to town turns to mud, so most families travel only once a week. "
        "They load their carts with apples and cheese, and they come back with salt, nails and news.\n"
    )
    reason, stats = run(FiltersConfig(), GOOD + more)
    assert reason is None, reason
    assert all(c.seen == 1 and c.removed == 0 for name, c in stats.items() if name != "code")
    assert stats["code"].seen == 0  # the code filter only applies to the code domain


def test_each_filter_removes_its_kind_of_document():
    cfg = FiltersConfig()
    cfg.length.min_words = 10
    cases = {
        "length": "too short to keep",
        "word_length": "a b c d e f g h i j k l m n o p q r s t u v w x y z " * 3,
        "symbols": "# heading # tag #hash and then the text goes on ... # more # and # more # with the words " * 3,
        "stopwords": "Apples, pears, plums, cherries: fruit trees grow well in sunny orchards near hills. " * 3,
        "language": "Le chat est sur la table dans la maison du village pendant que les enfants jouent. " * 1
        + "Der Hund schläft im Garten hinter dem Haus.",
        "lines": "This is a fine sentence about the weather and the sea. Lorem ipsum dolor sit amet, and the rest.",
        "repetition": "\n".join(["buy now and save with the best deals"] * 6 + [GOOD]),
    }
    cfg.language.min_common_words = 0.2
    for expected, text in cases.items():
        for name in cases:  # each filter on its own
            getattr(cfg, name).enabled = name == expected
        reason, stats = run(cfg, text)
        assert reason is not None and reason.startswith(expected + ":"), (expected, reason)
        assert stats[expected].removed == 1


def test_filter_domains_and_disabling():
    cfg = FiltersConfig()
    code = "def f(x):\n    return x + 1\n\n\n" * 20  # repetitive, few stop words: fine for code
    assert run(cfg, code, "code")[0] is None
    minified = "var a=" + "x" * 2000 + ";\n"
    assert run(cfg, minified, "code")[0].startswith("length") or run(cfg, minified, "code")[0].startswith("code")
    cfg.length.enabled = False
    assert run(cfg, minified, "code")[0].startswith("code: a line of")
    cfg.code.enabled = False
    assert run(cfg, minified, "code")[0] is None


def test_repetition_measures():
    toks = "a b c a b c a b c x".split()
    total = len(toks)
    assert top_ngram_fraction(toks, 3, total) == 3 * 3 / total  # "a b c" three times
    assert top_ngram_fraction("a b c d".split(), 2, 4) == 0.0  # nothing repeats
    # repeated 3-grams cover positions 3..8 (the 2nd and 3rd copies): 6 of 10 characters
    assert dup_ngram_fraction(toks, 3, total) == 0.6
    cfg = FiltersConfig().repetition
    assert repetition_filter(cfg, TextStats(GOOD)) is None


def test_pii_scrubbing():
    s = PiiScrubber(PiiConfig())
    text = (
        "Mail jane.doe+lists@mail.example.co.uk or bob@uni.edu; server 8.8.8.8 and 2a00:1450:4001:81b::200e.\n"
        "Keep: 192.168.1.10, 127.0.0.1, version 3.11.2.1.5, @decorator, a@b, x[1::2], 12:30:45, 2001:db8::1\n"
    )
    out = s(text, "prose")
    assert "jane" not in out and "bob@" not in out and out.count("email@example.com") == 2
    assert "8.8.8.8" not in out and "2a00" not in out and out.count("0.0.0.0") == 2
    assert out.split("\n")[1] == text.split("\n")[1]
    assert s.stats.emails == 2 and s.stats.ips == 2 and s.stats.documents == 1
    assert PiiScrubber(PiiConfig(domains=["code"]))(text, "prose") == text
