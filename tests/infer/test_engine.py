"""The continuous-batching engine: a request computes the same alone or in a busy batch; slots, prefix
caching, cancellation, timeouts, per-request failures, logprobs."""

from __future__ import annotations

import random
import time

import pytest
import torch

from scratchllm.errors import ScratchError
from scratchllm.infer.engine import Engine, RequestCancelled, RequestTimeout
from scratchllm.infer.sampling import SamplingParams

from .conftest import VOCAB


def _alone(model, prompt, params):
    return Engine(model, max_slots=1).generate([prompt], [params])[0]


def _busy_run(model, jobs, seed: int, **engine_kw):
    """Run jobs [(prompt, params)] on one engine, each arriving at a random step; returns their Requests."""
    rng = random.Random(seed)
    arrivals = sorted((rng.randrange(0, 25), i) for i in range(len(jobs)))
    engine = Engine(model, **engine_kw)
    reqs: dict[int, object] = {}
    step = busiest = 0
    while len(reqs) < len(jobs) or engine.has_work:
        while arrivals and arrivals[0][0] <= step:
            _, i = arrivals.pop(0)
            reqs[i] = engine.add(*jobs[i])
        engine.step()
        busiest = max(busiest, len(engine.running))
        step += 1
        assert step < 2000
    engine.busiest = busiest
    return [reqs[i] for i in range(len(jobs))], engine


def _random_jobs(rng: random.Random, n: int, sampled: bool = False):
    jobs = []
    for i in range(n):
        prompt = [rng.randrange(VOCAB) for _ in range(rng.randint(1, 30))]
        params = SamplingParams(max_new_tokens=rng.randint(1, 30), temperature=0,
                                stop_token_ids=rng.sample(range(VOCAB), 8) if i % 3 == 0 else [])
        if sampled and i % 2:
            params = SamplingParams(max_new_tokens=params.max_new_tokens, temperature=0.9, top_k=rng.choice([0, 8]),
                                    top_p=rng.choice([1.0, 0.8]), seed=1000 + i)
        if i % 4 == 1:  # penalties ride along too
            params.repetition_penalty, params.frequency_penalty = 1.3, 0.5
        jobs.append((prompt, params))
    return jobs


@pytest.mark.parametrize("seed", [0, 1])
def test_output_alone_equals_output_in_a_busy_batch(make_model, seed):
    """Random prompt lengths, arrival steps, lengths and stop tokens; fewer slots than requests (a queue),
    a small prefill chunk (long prompts take several steps), greedy and seeded sampled requests mixed."""
    model = make_model()
    rng = random.Random(seed)
    jobs = _random_jobs(rng, 14, sampled=True)
    reqs, engine = _busy_run(model, jobs, seed, max_slots=5, prefill_chunk=7)
    for (prompt, params), r in zip(jobs, reqs):
        alone = _alone(model, prompt, params)
        assert r.error is None and r.tokens == alone.tokens and r.finish_reason == alone.finish_reason
    assert {r.finish_reason for r in reqs} == {"stop", "length"}  # requests ended both ways, at different steps
    assert engine.busiest >= 4 and engine.waiting == type(engine.waiting)()  # a busy batch; nothing left waiting
    assert len(engine.free) == 5 and not engine.has_work  # every slot came back


def test_greedy_equals_the_model_without_a_cache(make_model):
    model = make_model()
    prompt = [3, 1, 4, 1, 5, 9, 2, 6]
    out = Engine(model, max_slots=2, prefill_chunk=3).generate([prompt], SamplingParams(max_new_tokens=20, temperature=0))
    x = list(prompt)
    with torch.no_grad():
        for _ in range(20):
            x.append(int(model(torch.tensor([x]))[0, -1].argmax()))
    assert out[0].tokens == x[len(prompt):]
    assert len(set(out[0].tokens)) > 3  # not a degenerate model


def test_seeded_sampling_is_reproducible(make_model):
    model = make_model()
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=5)
    a, b = _alone(model, [1, 2, 3], params), _alone(model, [1, 2, 3], params)
    assert a.tokens == b.tokens
    other = _alone(model, [1, 2, 3], SamplingParams(max_new_tokens=16, temperature=1.0, seed=6))
    assert other.tokens != a.tokens


def test_prefix_cache_reuses_a_shared_prompt_and_changes_nothing(make_model):
    model = make_model()
    system = list(range(1, 25))
    prompts = [system + [30 + i, 31 + i] for i in range(4)]
    params = SamplingParams(max_new_tokens=6, temperature=0)
    engine = Engine(model, max_slots=2)
    first = engine.generate(prompts[:1], params)  # leaves the system prompt cached in a free slot
    rest = engine.generate(prompts[1:], params)
    assert engine.metrics.prefix_hit_tokens >= 3 * len(system)
    plain = Engine(model, max_slots=2, prefix_caching=False).generate(prompts, params)
    assert [c.tokens for c in first + rest] == [c.tokens for c in plain]


def test_prefix_copied_from_a_running_request(make_model):
    model = make_model()
    shared = list(range(2, 20))
    params = SamplingParams(max_new_tokens=12, temperature=0)
    engine = Engine(model, max_slots=3)
    a = engine.add(shared + [40], params)
    engine.step()  # a is prefilled and running
    b = engine.add(shared + [41], params)
    engine.run([a, b])
    assert engine.metrics.prefix_hit_tokens == len(shared)
    assert b.tokens == _alone(model, shared + [41], params).tokens


def test_cancel_and_timeout_free_the_slot_at_once(make_model):
    model = make_model()
    engine = Engine(model, max_slots=2)
    params = SamplingParams(max_new_tokens=40, temperature=0)
    a, b = engine.add([1, 2], params), engine.add([3, 4], params)
    engine.step(), engine.step()
    assert len(engine.free) == 0
    a.cancel()
    b.deadline = time.monotonic() - 1
    engine.step()
    assert isinstance(a.error, RequestCancelled) and isinstance(b.error, RequestTimeout)
    assert len(engine.free) == 2 and not engine.has_work
    c = engine.add([5], params)
    engine.run([c])
    assert c.finish_reason == "length" and len(c.tokens) == 40


def test_an_error_in_one_request_fails_only_it(make_model):
    model = make_model()
    params = SamplingParams(max_new_tokens=10, temperature=0)
    engine = Engine(model, max_slots=3)

    def boom(req, delta):
        if delta is not None and len(req.tokens) == 3:
            raise RuntimeError("consumer failed")

    bad = engine.add([1, 2, 3], params, on_delta=boom)
    good = [engine.add([4, 5], params), engine.add([6], params)]
    engine.run([bad, *good])
    assert isinstance(bad.error, RuntimeError) and len(bad.tokens) == 3
    assert all(r.error is None and len(r.tokens) == 10 for r in good)
    assert good[0].tokens == _alone(model, [4, 5], params).tokens


def test_a_failing_forward_row_fails_only_its_request(make_model):
    model = make_model()
    params = SamplingParams(max_new_tokens=5, temperature=0)
    engine = Engine(model, max_slots=3)
    forward = model.forward

    def picky(idx, *a, **k):  # fails whenever the batch holds the poisoned token 7
        if (idx == 7).any():
            raise RuntimeError("poisoned")
        return forward(idx, *a, **k)

    model.forward = picky
    try:
        bad, good = engine.add([7, 7], params), engine.add([1, 2], params)
        engine.run([bad, good])
    finally:
        model.forward = forward
    assert isinstance(bad.error, RuntimeError) and good.error is None and len(good.tokens) == 5


def test_logprobs_are_the_models(make_model):
    model = make_model()
    prompt = [5, 6, 7]
    out = Engine(model).generate([prompt], SamplingParams(max_new_tokens=6, temperature=0.7, seed=1, logprobs=3))[0]
    seq = prompt + out.tokens
    with torch.no_grad():
        lp = model(torch.tensor([seq]))[0].float().log_softmax(-1)
    for i, (t, got, top) in enumerate(zip(out.tokens, out.logprobs, out.top_logprobs)):
        row = lp[len(prompt) - 1 + i]
        assert got == pytest.approx(float(row[t]), abs=1e-4)
        assert [tok for tok, _ in top] == row.topk(3).indices.tolist()


def test_requests_that_cannot_fit_are_refused(make_model):
    model = make_model()
    engine = Engine(model, max_slots=1, max_len=32)
    with pytest.raises(ScratchError, match="exceeds 32 tokens"):
        engine.add([1] * 30, SamplingParams(max_new_tokens=3))
    with pytest.raises(ScratchError, match="vocabulary"):
        engine.add([VOCAB], SamplingParams(max_new_tokens=3))
    assert not engine.has_work


def test_metrics_render_prometheus_text(make_model):
    model = make_model()
    engine = Engine(model, max_slots=2)
    engine.generate([[1, 2], [3]], SamplingParams(max_new_tokens=4, temperature=0))
    text = engine.metrics.render()
    assert "scratchllm:generation_tokens_total 8" in text
    assert 'scratchllm:time_to_first_token_seconds_bucket{le="+Inf"} 2' in text
    assert "scratchllm:time_per_output_token_seconds_count 6" in text
    assert 'scratchllm:request_success_total{finished_reason="length"} 2' in text


def test_repeated_prompts_share_one_prefill_and_sample_the_same(make_model):
    """RL rollouts' group of samples per prompt: the repeats copy the first copy's cached prompt."""
    model = make_model()
    prompts = [[5 + j for j in range(20)], [40 + j for j in range(15)]]
    batch = [p for p in prompts for _ in range(4)]
    params = SamplingParams(max_new_tokens=10, temperature=1.0, seed=11)
    engine = Engine(model, max_slots=len(batch))
    shared = engine.generate(batch, params)
    assert engine.metrics.prefix_hit_tokens == 3 * (20 - 1) + 3 * (15 - 1)  # every repeat prefilled 1 token
    plain = Engine(model, max_slots=len(batch), prefix_caching=False).generate(batch, params)
    assert [c.tokens for c in shared] == [c.tokens for c in plain]
    assert len({tuple(c.tokens) for c in shared[:4]}) > 1  # the group's samples differ (own seeds)
