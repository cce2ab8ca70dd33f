"""inspect tokens | embeddings | attention | memory: exact numbers, written pages, bad input."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from scratchllm.cli import main
from scratchllm.inspect.attention import attention_maps, head_summary
from scratchllm.inspect.embeddings import neighbours, pca, token_kind
from scratchllm.model.model import ModelConfig, Transformer

from .conftest import TEXT


def _outputs_ok(out, name):
    png, page = out / f"{name}.png", out / f"{name}.html"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    assert "data:image/png;base64," in html
    # Self-contained: nothing to fetch (no scripts, stylesheets or images by URL).
    assert not re.search(r"(src|href)=[\"']?(https?:|//)", html) and "<script" not in html


# --- attention ---------------------------------------------------------------------------------------


def test_attention_rows_sum_to_one_and_future_is_zero(model_dir):
    model = Transformer.from_pretrained(model_dir).eval()
    ids = [5, 9, 7, 5, 9, 7, 3, 1, 8]
    maps = attention_maps(model, ids)
    assert len(maps) == 2 and maps[0].shape == (4, 9, 9)
    for p in maps:
        torch.testing.assert_close(p.sum(-1), torch.ones(4, 9))
        assert (p.triu(1) == 0).all()  # the causal mask: no weight on future tokens
    # The model is back on its fast path, and the math weights reproduce its output exactly.
    assert all(layer.attn.impl == "sdpa" and not layer.attn.record_probs for layer in model.layers)
    with torch.no_grad():
        want = model(torch.tensor([ids]))
        model.layers[0].attn.impl = model.layers[1].attn.impl = "math"
        torch.testing.assert_close(model(torch.tensor([ids])), want, rtol=1e-4, atol=1e-5)


def test_head_summary_on_handmade_heads():
    T = 6
    prev = torch.zeros(T, T)
    prev[0, 0] = 1
    for t in range(1, T):
        prev[t, t - 1] = 1
    s = head_summary(prev, [1, 2, 3, 4, 5, 6])
    assert s["prev"] == 1 and s["first"] == pytest.approx(1 / 5) and s["entropy"] == 0 and s["induction"] is None
    ids = [1, 2, 3, 1, 2, 3]
    ind = torch.zeros(T, T)
    ind[:3, 0] = 1
    for t in range(3, T):
        ind[t, t - 2] = 1  # token at t repeats the one at t-3; the one after it sits at t-2
    assert head_summary(ind, ids)["induction"] == 1


# --- embeddings --------------------------------------------------------------------------------------


def test_pca_matches_numpy_svd_and_torch_pca_lowrank():
    torch.manual_seed(0)
    x = torch.randn(300, 16) @ torch.randn(16, 16) + 3.0
    coords, ratio = pca(x, 2)
    xc = (x - x.mean(0)).double().numpy()
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    want = u[:, :2] * s[:2]
    for k in range(2):  # a principal component is defined up to its sign
        sign = np.sign(np.dot(coords[:, k].numpy(), want[:, k]))
        np.testing.assert_allclose(coords[:, k].numpy() * sign, want[:, k], rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ratio.numpy(), (s[:2] ** 2 / (s**2).sum()), rtol=1e-5)
    torch.manual_seed(0)
    _, _, v = torch.pca_lowrank(x, q=16, center=True, niter=8)  # full rank: exact
    lowrank = (x - x.mean(0)) @ v[:, :2]
    for k in range(2):
        torch.testing.assert_close(coords[:, k].abs(), lowrank[:, k].abs(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("raw, kind", [(b" the", "letters"), (b"2024", "digits"), (b"...", "punctuation"),
                                       (b"():", "code"), (b"foo_bar", "code"), (b"\n  ", "whitespace"),
                                       (b"\xe2\x80", "bytes")])
def test_token_kind(raw, kind):
    assert token_kind(raw) == kind


def test_neighbours_by_cosine():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    assert [i for i, _ in neighbours(emb, emb[0], 3, {0})] == [1, 2, 3]


# --- the commands ------------------------------------------------------------------------------------


def test_inspect_tokens_writes_png_and_html(model_dir, tmp_path, capsys, tokenizer):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    other = tmp_path / "tok2"
    from scratchllm.tokenizer import train_bpe

    train_bpe([TEXT], 256 + 7 + 80).save_pretrained(other)
    out = tmp_path / "out"
    assert main(["inspect", "tokens", "--tokenizer", str(model_dir), "--text", "the cat sat",
                 "--corpus", str(corpus), "--compare", str(other), "--out", str(out)]) == 0
    _outputs_ok(out, "tokens")
    text = capsys.readouterr().out
    n = len(tokenizer.encode_ordinary("the cat sat"))
    assert f"{n} tokens, {11 / n:.2f} bytes/token" in text and "of the vocabulary used" in text
    html = (out / "tokens.html").read_text()
    assert html.count('title="id ') == n + len(train_bpe([TEXT], 256 + 7 + 80).encode_ordinary("the cat sat"))


def test_inspect_embeddings_and_attention(model_dir, tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["inspect", "embeddings", "--model", str(model_dir), "--tokens", "the", "#97",
                 "--analogy", "#100", "the", "#101", "--before", str(model_dir), "--out", str(out)]) == 0
    _outputs_ok(out, "embeddings")
    text = capsys.readouterr().out
    assert "'the' (before):" in text and "'#100' - 'the' + '#101' =" in text
    out = tmp_path / "a"
    assert main(["inspect", "attention", "--model", str(model_dir), "--sentence", "the cat the cat",
                 "--out", str(out)]) == 0
    _outputs_ok(out, "attention")
    assert "2 layers x 4 heads" in capsys.readouterr().out


def test_inspect_memory_command(tmp_path, capsys):
    out = tmp_path / "m"
    assert main(["inspect", "memory", "--config", "configs/model/1m.toml", "--batch-size", "4",
                 "--device-memory", "2GiB", "--out", str(out)]) == 0
    _outputs_ok(out, "memory")
    text = capsys.readouterr().out
    assert "largest model of this shape family that fits 2.00 GiB" in text


def _summary(capsys):
    """The printed summary without its last line (which names the output directory)."""
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1].startswith("wrote ")
    return lines[:-1]


def test_config_file_overrides_and_alias_flags_are_the_same_command(model_dir, tmp_path, capsys):
    """--config FILE + key=value, key=value alone and the old flags write the same page and summary."""
    runs = {}
    cfg = tmp_path / "att.toml"
    cfg.write_text(f'model = "{model_dir}"\nsentence = "the dog"\nbos = true\n')
    for name, argv in {"file": ["--config", str(cfg), 'sentence="the cat the cat"'],
                       "keys": [f"model={model_dir}", "sentence=the cat the cat", "bos=true"],
                       "flags": ["--model", str(model_dir), "--sentence", "the cat the cat", "--bos"]}.items():
        out = tmp_path / name
        assert main(["inspect", "attention", *argv, "--out" if name == "flags" else f"out_dir={out}",
                     *([str(out)] if name == "flags" else [])]) == 0
        runs[name] = (_summary(capsys), (out / "attention.html").read_text())
    assert runs["file"] == runs["keys"] == runs["flags"]
    assert runs["file"][0][0].startswith("5 tokens")  # <|bos|> + "the cat the cat", not the file's sentence

    runs = {}
    cfg = tmp_path / "emb.toml"
    cfg.write_text(f'model = "{model_dir}"\ntokens = ["the"]\nanalogies = [["#100", "the", "#101"]]\nk = 5\n')
    for name, argv in {"file": ["--config", str(cfg), "k=3"],
                       "flags": ["--model", str(model_dir), "--tokens", "the", "--analogy", "#100", "the", "#101",
                                 "-k", "3"]}.items():
        assert main(["inspect", "embeddings", *argv, "--out", str(tmp_path / name)]) == 0
        runs[name] = _summary(capsys)
    assert runs["file"] == runs["flags"] and runs["file"][1].count(",") == 2  # k=3 neighbours

    runs = {}
    cfg = tmp_path / "tok.toml"
    cfg.write_text(f'tokenizer = "{model_dir}"\ntext = "the cat sat"\n')
    for name, argv in {"file": ["--config", str(cfg)],
                       "flags": ["--tokenizer", str(model_dir), "--text", "the cat sat"]}.items():
        assert main(["inspect", "tokens", *argv, "--out", str(tmp_path / name)]) == 0
        runs[name] = _summary(capsys)
    assert runs["file"] == runs["flags"]


def test_memory_config_file_keys_and_the_old_form_agree(tmp_path, capsys):
    """inspect memory: a MemoryConfig file, key=value, and the old form (--config naming the model, bare
    model keys, flags) describe the same step."""
    cfg = tmp_path / "mem.toml"
    cfg.write_text('model = "model/1m"\nbatch_size = 4\nprecision = "bf16"\n[model_keys]\nn_layers = 3\n')
    forms = {"file": ["--config", str(cfg)],
             "keys": ["model=model/1m", "model_keys.n_layers=3", "batch_size=4", "precision=bf16"],
             "old": ["--config", "configs/model/1m.toml", "n_layers=3", "--batch-size", "4", "--precision", "bf16"],
             "prefixed": ["--config", "configs/model/1m.toml", "model.n_layers=3", "batch_size=4", "--precision",
                          "bf16"]}
    results = {}
    for name, argv in forms.items():
        out = tmp_path / name
        assert main(["inspect", "memory", *argv, "--out", str(out)]) == 0
        results[name] = ((out / "memory.json").read_text(), _summary(capsys))
    assert len(set(map(str, results.values()))) == 1
    assert '"n_layers": 3' in results["file"][0] and "bf16" in results["file"][1][1]


def test_inspect_run_returns_a_stage_result(model_dir, tmp_path):
    from scratchllm.config import load_config
    from scratchllm.inspect.attention import run
    from scratchllm.inspect.config import AttentionConfig
    from scratchllm.stage import StageResult

    result = run(load_config(AttentionConfig, None, [f"model={model_dir}", f"out_dir={tmp_path}",
                                                      "sentence=the cat the cat"]))
    assert isinstance(result, StageResult) and result.completed
    assert result.outputs == {"png": tmp_path / "attention.png", "html": tmp_path / "attention.html"}
    m = result.metrics
    assert (m["layers"], m["heads"], len(m["per_head"])) == (2, 4, 8)
    assert f"{m['tokens']} tokens, 2 layers x 4 heads" in m["summary"]
    for h in m["per_head"]:  # the page's table shows the same figures
        assert f"<td>L{h['layer']} H{h['head']}</td><td>{h['prev']:.2f}</td>" in result.outputs["html"].read_text()


def _error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "\nfix: " in err and "Traceback" not in err
    return err


def test_bad_input_gives_error_and_fix(model_dir, tmp_path, capsys, tokenizer):
    from scratchllm.tokenizer import train_bpe

    small = tmp_path / "small"  # a model with fewer embeddings than the tokenizer has ids
    Transformer(ModelConfig(vocab_size=tokenizer.vocab_size - 10, context_length=32, d_model=32, n_layers=1,
                            n_heads=4)).save_pretrained(small)
    assert "do not belong together" in _error(capsys, ["inspect", "attention", "--model", str(small),
                                                       "--tokenizer", str(model_dir), "--out", str(tmp_path / "x")])
    long = "the cat sat on the mat " * 20
    assert "context" in _error(capsys, ["inspect", "attention", "--model", str(model_dir), "--sentence", long,
                                        "--out", str(tmp_path / "x")])
    assert "not a single token" in _error(capsys, ["inspect", "embeddings", "--model", str(model_dir),
                                                   "--tokens", "zebra crossing", "--out", str(tmp_path / "x")])
    assert "not in the vocabulary" in _error(capsys, ["inspect", "embeddings", "--model", str(model_dir),
                                                      "--tokens", "#99999", "--out", str(tmp_path / "x")])
    assert "weights alone" in _error(capsys, ["inspect", "memory", "--config", "configs/model/125m.toml",
                                              "--device-memory", "100MiB", "--out", str(tmp_path / "x")])
    assert "not found" in _error(capsys, ["inspect", "attention", "--model", str(tmp_path / "nope")])
    assert "memory size" in _error(capsys, ["inspect", "memory", "--device-memory", "lots"])
    assert "unknown config key 'sentense'" in _error(capsys, ["inspect", "attention", f"model={model_dir}",
                                                               "sentense=x"])
    assert "no tokenizer given" in _error(capsys, ["inspect", "tokens", "text=x"])
    assert "no model given" in _error(capsys, ["inspect", "embeddings"])


# --- memory ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, pos_emb="learned"), dict(n_kv_heads=1, d_ff=96)])
def test_param_counts_match_the_model(kw):
    from scratchllm.inspect.memory import param_counts

    c = ModelConfig(vocab_size=300, context_length=16, d_model=32, n_layers=3, n_heads=4, **kw)
    assert param_counts(c)["total"] == Transformer(c).num_params()


def test_largest_fitting_model_fits_and_the_next_does_not():
    from scratchllm.inspect.memory import estimate, family, largest_fitting, parse_bytes

    c = ModelConfig(vocab_size=4096, context_length=256, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2)
    kw = dict(batch_size=8, seq_len=256)
    budget = parse_bytes("2GiB")
    fc, fe = largest_fitting(c, budget, **kw)
    assert fe.peak <= budget < estimate(family(c, fc.n_heads + 2), **kw).peak
    assert fc.head_dim == c.head_dim and fc.n_heads // fc.n_kv_heads == 2


MARGIN = 0.10  # docs/inspect.md states this margin


def _check_measured(kw, B, T, precision, ac):
    from scratchllm.inspect.memory import estimate, measure_peak

    c = ModelConfig(**kw)
    predicted = estimate(c, B, T, precision, ac).peak
    measured = measure_peak(c, B, T, precision, ac)["peak"]
    assert abs(predicted - measured) <= MARGIN * measured, (predicted, measured)


@pytest.mark.slow  # a fresh process imports torch: about 30 s on a loaded 2-core machine
@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="measuring needs Linux /proc")
def test_memory_estimate_matches_a_measured_cpu_step():
    _check_measured(dict(vocab_size=2048, context_length=128, d_model=64, n_layers=2, n_heads=4, attn_impl="math"),
                    8, 128, "fp32", "none")


@pytest.mark.slow
@pytest.mark.parametrize("kw, B, T, precision, ac", [
    (dict(vocab_size=4096, context_length=256, d_model=128, n_layers=4, n_heads=4), 8, 256, "fp32", "none"),
    (dict(vocab_size=4096, context_length=256, d_model=128, n_layers=4, n_heads=4, attn_impl="math"), 8, 256,
     "fp32", "none"),
    (dict(vocab_size=4096, context_length=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2), 8, 256,
     "fp32", "full"),
    (dict(vocab_size=4096, context_length=256, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2), 8, 256,
     "bf16", "none"),
    (dict(vocab_size=8192, context_length=128, d_model=384, n_layers=6, n_heads=6, n_kv_heads=2), 2, 128,
     "fp32", "none"),
])
def test_memory_estimate_matches_measured_steps(kw, B, T, precision, ac):
    _check_measured(kw, B, T, precision, ac)


def test_optional_projections():
    from scratchllm.errors import ScratchError
    from scratchllm.inspect.embeddings import project

    x = torch.randn(40, 8)
    pytest.importorskip("sklearn", reason="t-SNE needs scikit-learn")
    assert project(x, "tsne").shape == (40, 2)
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ScratchError, match="umap-learn"):
            project(x, "umap")
    else:
        assert project(x, "umap").shape == (40, 2)
