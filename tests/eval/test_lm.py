"""Scoring and generation on top of LanguageModel: conventions, windows, batching, backends, loading."""

from __future__ import annotations

import json

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.eval.lm import LanguageModel, ScratchLM, load_lm, model_kind, rolling_windows


def _naive_logprob(model, ids: list[int], n_targets: int) -> float:
    """log P of the last n_targets tokens of ids, one unbatched forward pass."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]])).float(), -1)[0]
    return sum(float(logp[i - 1, ids[i]]) for i in range(len(ids) - n_targets, len(ids)))


def test_encode_pair_moves_trailing_space_to_continuation(lm):
    ctx, cont = lm.encode_pair("The answer is ", "blue")
    assert lm.decode(ctx) == "The answer is"
    assert lm.decode(cont) == " blue"
    assert ctx + cont == lm.encode("The answer is blue")


def test_empty_context_is_conditioned_on_the_prefix_token(lm, tokenizer):
    ctx, cont = lm.encode_pair("", "hello world")
    assert ctx == [tokenizer.bos_id] and lm.decode(cont) == "hello world"


def test_loglikelihood_equals_naive_scoring_and_is_batch_invariant(lm, tiny_model):
    requests = [("Question: what colour is the sky?\nAnswer:", " blue"),
                ("Question: what colour is the sky?\nAnswer:", " green and yellow"),
                ("Question: what colour is the sky?\nAnswer:", " A"),
                ("Once upon a time", " there was a king"),
                ("Once upon a time", " there"),  # a prefix of the previous input: shares its forward pass
                ("x" * 300, " tail")]  # longer than the context: truncated from the left
    big = lm.loglikelihood(requests, batch_size=16)
    one = lm.loglikelihood(requests, batch_size=1)
    for (ctx, cont), a, b in zip(requests, big, one, strict=True):
        c, t = lm.encode_pair(ctx, cont)
        ids = (c + t)[-(lm.max_length + 1):]
        assert a.n_tokens == len(t)
        assert a.logprob == pytest.approx(_naive_logprob(tiny_model, ids, len(t)), abs=1e-4)
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.is_greedy == b.is_greedy


def test_greedy_flag(lm, tiny_model):
    ctx = lm.encode("The cat sat on the")
    with torch.no_grad():
        best = int(tiny_model(torch.tensor([ctx]))[0, -1].argmax())
    other = (best + 1) % lm.vocab_size
    greedy, not_greedy = lm.score_tokens([(ctx, [best]), (ctx, [other])])
    assert greedy.is_greedy and not not_greedy.is_greedy
    assert greedy.logprob > not_greedy.logprob


@pytest.mark.parametrize("n", [0, 1, 5, 63, 64, 65, 130, 200])
@pytest.mark.parametrize("stride", [None, 1, 16, 64])
def test_rolling_windows_predict_every_token_once(n, stride):
    tokens = list(range(1000, 1000 + n))
    windows = rolling_windows(tokens, prefix_id=7, max_length=64, stride=stride)
    predicted = [t for _, tgt in windows for t in tgt]
    assert predicted == tokens
    seq = [7, *tokens]
    for inp, tgt in windows:
        assert 1 <= len(inp) <= 64 and len(tgt) <= len(inp)
        # the input is exactly the tokens before the targets (the window's right edge)
        end = seq.index(tgt[-1])
        assert inp == seq[end - len(inp):end]


def test_rolling_window_with_stride_gives_more_context(lm):
    text = " ".join(["the quick brown fox jumps over the lazy dog"] * 30)
    full = lm.loglikelihood_rolling([text])[0]
    strided = lm.loglikelihood_rolling([text], stride=16)[0]
    assert full.n_tokens == strided.n_tokens == len(lm.encode(text))
    assert strided.logprob != pytest.approx(full.logprob)  # different contexts, different numbers
    with pytest.raises(ScratchError, match="stride"):
        lm.loglikelihood_rolling([text], stride=65)


def test_short_text_rolling_equals_naive(lm, tiny_model, tokenizer):
    text = "A short document."
    ids = [tokenizer.bos_id, *lm.encode(text)]
    assert lm.loglikelihood_rolling([text])[0].logprob == pytest.approx(
        _naive_logprob(tiny_model, ids, len(ids) - 1), abs=1e-4)


def test_generate_is_greedy_and_stops(lm, tiny_model):
    prompt = "Hello"
    out = lm.generate(prompt, max_tokens=8)[0]
    ids = lm.encode(prompt)
    with torch.no_grad():
        for _ in range(8):
            ids.append(int(tiny_model(torch.tensor([ids]))[0, -1].argmax()))
    assert out == lm.decode(ids[len(lm.encode(prompt)):])
    if len(out) > 2:
        stop = out[1:3]
        assert lm.generate(prompt, max_tokens=8, stop=[stop])[0] == out[: out.find(stop)]


def test_prompts_longer_than_the_cache_use_a_sliding_window(lm, tiny_model):
    prompt = "the cat sat on the mat " * 20
    ids = lm.encode(prompt)
    assert len(ids) > tiny_model.cfg.context_length
    new: list[int] = []
    with torch.no_grad():
        for _ in range(5):
            new.append(int(tiny_model(torch.tensor([(ids + new)[-tiny_model.cfg.context_length:]]))[0, -1].argmax()))
    assert lm.generate(prompt, max_tokens=5)[0] == lm.decode(new)


def test_chat_prompt_uses_the_chat_format(lm, tokenizer):
    from scratchllm.tokenizer.chat import encode_chat

    ids, ends = lm.chat_prompt("What is 2+2?")
    assert ids == encode_chat(tokenizer, [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True)[0]
    assert ids[-1] == tokenizer.special_tokens["<|assistant|>"] and ends == {tokenizer.special_tokens["<|end|>"]}


class _Counter(LanguageModel):
    """Emits 'a', 'b', then token 9 (its end of turn), then 'c' forever; a character-level vocabulary."""

    name, max_length, vocab_size = "counter", 64, 128

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) if i >= 32 else f"<{i}>" for i in ids)

    prefix_id = 1
    eos_id = None

    def chat_prompt(self, prompt):
        return [2, *self.encode(prompt), 3], {9}

    def logits(self, ids):
        script = [ord("a"), ord("b"), 9]
        out = torch.zeros(*ids.shape, self.vocab_size)
        for b, row in enumerate(ids.tolist()):
            start = row.index(3) + 1 if 3 in row else len(self.encode("x"))
            step = len(row) - start
            out[b, -1, script[step] if step < len(script) else ord("c")] = 1.0
        return out


def test_chat_generation_stops_at_the_end_of_turn():
    assert _Counter().generate("x", max_tokens=6, chat=True) == ["ab"]
    assert _Counter().generate("x", max_tokens=5) == ["ab<9>cc"]  # plain completion: no end of turn


def test_chat_needs_a_chat_model():
    with pytest.raises(ScratchError, match="no chat template"):
        LanguageModel().chat_prompt("x")


def test_sampling_is_seeded(lm):
    a = lm.generate("Once", max_tokens=6, temperature=1.0, n=3, seed=1)
    b = lm.generate("Once", max_tokens=6, temperature=1.0, n=3, seed=1)
    assert a == b and len(a) == 3


def test_hf_backend_matches_ours(model_dirs, lm):
    pytest.importorskip("transformers")
    hf = load_lm(model_dirs["hf"])
    assert type(hf).__name__ == "TransformersLM" and hf.max_length == lm.max_length
    requests = [("The weather today is", " sunny"), ("Two plus two is", " four")]
    for a, b in zip(hf.loglikelihood(requests), lm.loglikelihood(requests), strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
    assert hf.generate("Hello", max_tokens=5) == lm.generate("Hello", max_tokens=5)
    # --chat: transformers' apply_chat_template on the exported template gives our chat ids
    (hf_ids, hf_ends), (ids, ends) = hf.chat_prompt("Hi there"), lm.chat_prompt("Hi there")
    assert hf_ids == ids and hf_ends >= ends
    assert hf.generate("Hi", max_tokens=5, chat=True) == lm.generate("Hi", max_tokens=5, chat=True)
    # --backend scratchllm imports the HF Llama directory into our Transformer
    ours = load_lm(model_dirs["hf"], backend="scratchllm")
    assert isinstance(ours, ScratchLM)
    assert ours.loglikelihood(requests)[0].logprob == pytest.approx(lm.loglikelihood(requests)[0].logprob, abs=1e-5)


def test_load_our_directory(model_dirs):
    loaded = load_lm(model_dirs["ours"])
    assert isinstance(loaded, ScratchLM) and loaded.max_length == 64


@pytest.mark.parametrize("case", ["missing", "file", "no_config", "foreign_config", "bad_json"])
def test_not_a_model_directory(tmp_path, case):
    path = tmp_path / "m"
    if case == "file":
        path.write_text("hi")
    elif case != "missing":
        path.mkdir()
        if case == "foreign_config":
            (path / "config.json").write_text(json.dumps({"hello": 1}))
        elif case == "bad_json":
            (path / "config.json").write_text("{nope")
    with pytest.raises(ScratchError) as e:
        model_kind(path)
    assert str(path) in e.value.message
    assert {"missing": "not found", "file": "not a model directory", "no_config": "not a model directory",
            "foreign_config": "not a model directory", "bad_json": "not valid JSON"}[case] in e.value.message


def test_missing_tokenizer_is_explained(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "alone" / "model")
    with pytest.raises(ScratchError, match="no tokenizer found") as e:
        load_lm(tmp_path / "alone" / "model")
    assert "--tokenizer" in e.value.hint


def test_base_class_is_abstract():
    with pytest.raises(NotImplementedError):
        LanguageModel().encode("x")
