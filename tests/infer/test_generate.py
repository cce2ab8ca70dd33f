"""scratchllm.infer.generate: greedy vs no-cache, batching, sampling processors vs transformers, stops, streaming."""

from __future__ import annotations

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.generate import complete, generate, stream
from scratchllm.infer.sampling import SamplingParams, apply_penalties, filter_logits

from .conftest import VOCAB

PROMPTS = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16, 17]]


def _greedy_without_cache(model, prompt: list[int], n: int) -> list[int]:
    x = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            x.append(int(model(torch.tensor([x]))[0, -1].argmax()))
    return x[len(prompt) :]


@pytest.mark.parametrize("pos_emb", ["rope", "learned"])
def test_greedy_batched_with_cache_equals_greedy_without_cache(make_model, pos_emb):
    model = make_model(pos_emb=pos_emb)
    out = generate(model, PROMPTS, SamplingParams(max_new_tokens=24, temperature=0))
    for prompt, tokens in zip(PROMPTS, out):
        assert tokens == _greedy_without_cache(model, prompt, 24)
    assert len(set(out[0])) > 3  # the model is not degenerate: the comparison means something


def test_seeded_sampling_is_reproducible_and_batch_independent(make_model):
    model = make_model()
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=20, seed=7)
    batch = generate(model, PROMPTS, params)
    assert batch == generate(model, PROMPTS, params)
    assert batch[0] == generate(model, PROMPTS[:1], params)[0]  # row 0 of a batch == the prompt alone
    assert batch != generate(model, PROMPTS, SamplingParams(max_new_tokens=16, top_k=20, seed=8))


def test_generation_restores_training_mode(make_model):
    model = make_model().train()
    generate(model, PROMPTS, SamplingParams(max_new_tokens=3, temperature=0))
    assert model.training


# --- logits processors vs Hugging Face's ----------------------------------------------------------


def _hf_processors(params: SamplingParams):
    transformers = pytest.importorskip("transformers")
    g = transformers.generation.logits_process
    procs = [g.TemperatureLogitsWarper(params.temperature)]
    if params.top_k:
        procs.append(g.TopKLogitsWarper(params.top_k))
    if params.top_p < 1:
        procs.append(g.TopPLogitsWarper(params.top_p))
    if params.min_p > 0:
        procs.append(g.MinPLogitsWarper(params.min_p))
    return g.LogitsProcessorList(procs)


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.8),
        SamplingParams(temperature=1.0, min_p=0.1),
        SamplingParams(temperature=0.9, top_k=30, top_p=0.9, min_p=0.05),
    ],
    ids=["top_k", "top_p", "min_p", "all"],
)
def test_filters_match_transformers(params):
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.zeros(4, 1, dtype=torch.long)
    ours = filter_logits(logits, params)
    theirs = _hf_processors(params)(ids, logits.clone())
    assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1))


def test_repetition_penalty_matches_transformers():
    transformers = pytest.importorskip("transformers")
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(1)) * 3
    ids = torch.tensor([[3, 5, 5, 40], [0, 1, 2, 60]])
    seen = torch.zeros(2, VOCAB, dtype=torch.bool).scatter(1, ids, True)
    ours = apply_penalties(logits, seen, None, SamplingParams(repetition_penalty=1.3))
    theirs = transformers.generation.logits_process.RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone())
    torch.testing.assert_close(ours, theirs)


def test_frequency_and_presence_penalties_follow_openai_formula():
    logits = torch.zeros(1, 6)
    counts = torch.tensor([[0.0, 1, 3, 0, 0, 2]])
    out = apply_penalties(logits, None, counts, SamplingParams(frequency_penalty=0.5, presence_penalty=1.0))
    assert out.tolist() == [[0.0, -1.5, -2.5, 0.0, 0.0, -2.0]]


def test_sampled_tokens_respect_top_k(make_model):
    model = make_model()
    with torch.no_grad():
        first = model(torch.tensor([PROMPTS[0]]))[0, -1]
    allowed = set(torch.topk(first, 3).indices.tolist())
    firsts = {generate(model, [PROMPTS[0]], SamplingParams(max_new_tokens=1, top_k=3, seed=s))[0][0] for s in range(30)}
    assert firsts <= allowed and len(firsts) > 1


def test_frequency_penalty_reduces_repetition(make_model):
    model = make_model(init_std=0.05)  # a near-uniform-argmax model that repeats itself greedily
    plain = generate(model, [PROMPTS[0]], SamplingParams(max_new_tokens=30, temperature=0))[0]
    penalised = generate(model, [PROMPTS[0]], SamplingParams(max_new_tokens=30, temperature=0, frequency_penalty=5.0))[0]
    assert len(set(penalised)) > len(set(plain))


# --- stopping and streaming -----------------------------------------------------------------------


def test_stop_token_ends_generation_and_is_returned(make_model):
    model = make_model()
    free = generate(model, [PROMPTS[1]], SamplingParams(max_new_tokens=20, temperature=0))[0]
    stop = free[5]
    out = complete(model, [PROMPTS[1]], SamplingParams(max_new_tokens=20, temperature=0, stop_token_ids=[stop]))[0]
    assert out.tokens == free[: free.index(stop) + 1] and out.finish_reason == "stop"


def test_stop_string_cuts_text_and_stream_equals_complete(make_model, byte_tokenizer):
    model = make_model(vocab_size=byte_tokenizer.vocab_size)
    prompt = byte_tokenizer.encode("hi")
    free = complete(model, [prompt], SamplingParams(max_new_tokens=30, temperature=0), byte_tokenizer)[0]
    assert free.finish_reason == "length" and len(free.text) > 0
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    params = SamplingParams(max_new_tokens=30, temperature=0, stop=[stop], ignore_eos=True)
    cut = complete(model, [prompt], params, byte_tokenizer)[0]
    assert cut.finish_reason == "stop" and cut.text == free.text[: free.text.index(stop)]
    deltas = list(stream(model, prompt, params, byte_tokenizer))
    assert "".join(d.text for d in deltas) == cut.text
    assert deltas[-1].finish_reason == "stop" and all(d.finish_reason is None for d in deltas[:-1])


def test_streamed_text_never_splits_a_character(byte_tokenizer):
    from scratchllm.infer.sampling import StopChecker

    checker = StopChecker(SamplingParams(), byte_tokenizer)
    pieces = [checker.push(b) for b in byte_tokenizer.encode("é€ok")]
    assert pieces == ["", "é", "", "", "€", "o", "k"]


def test_control_tokens_are_not_text_unless_asked(byte_tokenizer):
    from scratchllm.infer.sampling import StopChecker

    ids = byte_tokenizer.encode("a<|end|>b<|user|>c", allowed_special="all")
    assert len(ids) == 5
    hidden = StopChecker(SamplingParams(), byte_tokenizer)
    assert "".join(hidden.push(i) for i in ids) + hidden.flush() == "abc"
    shown = StopChecker(SamplingParams(skip_special_tokens=False), byte_tokenizer)
    assert "".join(shown.push(i) for i in ids) + shown.flush() == "a<|end|>b<|user|>c"
    assert hidden.tokens == shown.tokens == ids  # the token ids are reported either way


def test_eos_stops_unless_ignored(make_model):
    model = make_model()
    free = generate(model, [PROMPTS[1]], SamplingParams(max_new_tokens=12, temperature=0))[0]
    eos = free[4]

    class Tok:  # the parts of a tokenizer StopChecker uses, with <|eos|> = a token the model emits
        special_tokens = {"<|eos|>": eos}
        eos_id = eos

        def id_to_bytes(self, i: int) -> bytes:
            return b"ab"[i % 2 : i % 2 + 1]

    stopped = complete(model, [PROMPTS[1]], SamplingParams(max_new_tokens=12, temperature=0), Tok())[0]
    assert stopped.tokens == free[: free.index(eos) + 1] and stopped.finish_reason == "stop"
    assert len(stopped.text) == len(stopped.tokens) - 1  # the stop token is not part of the text
    ignored = complete(model, [PROMPTS[1]], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True), Tok())[0]
    assert ignored.tokens == free and ignored.finish_reason == "length"


def test_bad_inputs_raise_scratch_errors(make_model):
    model = make_model()
    with pytest.raises(ScratchError, match="context_length"):
        generate(model, [[1] * 60], SamplingParams(max_new_tokens=10))
    with pytest.raises(ScratchError, match="empty"):
        generate(model, [[]], SamplingParams())
    with pytest.raises(ScratchError, match="vocabulary"):
        generate(model, [[VOCAB]], SamplingParams())
    with pytest.raises(ScratchError, match="top_p"):
        generate(model, [[1]], SamplingParams(top_p=0))
    with pytest.raises(ScratchError, match="max_new_tokens"):
        generate(model, [[1]], SamplingParams(max_new_tokens=0))
    with pytest.raises(ScratchError, match="tokenizer"):
        generate(model, [[1]], SamplingParams(stop=["x"]))
