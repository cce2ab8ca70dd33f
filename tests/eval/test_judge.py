"""LLM-as-judge against a tiny fake OpenAI-compatible server on 127.0.0.1 (bounded requests)."""

from __future__ import annotations

import json
import socket

import pytest

from scratchllm.client import ChatClient
from scratchllm.errors import ScratchError
from scratchllm.eval.judge import (
    grade_single,
    judge_pairwise,
    parse_rating,
    parse_verdict,
    summarize_pairwise,
)

def completion(text: str) -> dict:
    return {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


@pytest.fixture
def fake_server(fake_openai):  # tests/conftest.py
    return fake_openai


def _client(url, **kw):
    return ChatClient(url, model="judge-1", api_key="sk-test", backoff=0.01, sleep=lambda s: None, **kw)


def test_single_answer_grading(fake_server):
    server = fake_server(lambda body, n: (200, completion("Accurate and clear. Rating: [[8]]")))
    grade = grade_single(_client(server.url), "Why is the sky blue?", "Rayleigh scattering.", reference="Scattering")
    assert grade.score == 8.0
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions" and req["model"] == "judge-1"
    assert "Rayleigh scattering." in req["messages"][1]["content"] and "Reference" in req["messages"][1]["content"]
    assert server.headers[0]["Authorization"] == "Bearer sk-test"


def _content_judge(body):
    """Prefers the answer that contains 'correct', wherever it is shown."""
    user = body["messages"][-1]["content"]
    a = user.split("[The Start of Assistant A's Answer]")[1].split("[The End")[0]
    b = user.split("[The Start of Assistant B's Answer]")[1].split("[The End")[0]
    verdict = "A" if "correct" in a and "correct" not in b else "B" if "correct" in b and "correct" not in a else "C"
    return 200, completion(f"Reasoning... [[{verdict}]]")


def test_pairwise_swaps_positions_and_keeps_a_consistent_winner(fake_server):
    server = fake_server(lambda body, n: _content_judge(body))
    client = _client(server.url)
    r = judge_pairwise(client, "Q?", "the correct answer", "a wrong answer")
    assert (r.winner, r.consistent) == ("A", True)
    r = judge_pairwise(client, "Q?", "a wrong answer", "the correct answer")
    assert (r.winner, r.consistent) == ("B", True)
    # both orders were asked
    users = [req["messages"][-1]["content"] for req in server.requests[:2]]
    assert users[0].index("the correct answer") < users[0].index("a wrong answer")
    assert users[1].index("a wrong answer") < users[1].index("the correct answer")


def test_position_bias_is_removed(fake_server):
    server = fake_server(lambda body, n: (200, completion("The first one. [[A]]")))  # always picks position A
    results = [judge_pairwise(_client(server.url), "Q?", f"answer {i}", f"other {i}") for i in range(3)]
    assert all(r.winner == "tie" and not r.consistent for r in results)
    summary = summarize_pairwise(results)
    assert summary["win_rate"] == 0 and summary["tie_rate"] == 1 and summary["consistency"] == 0


def test_retries_with_backoff_on_5xx_and_429(fake_server):
    sleeps = []
    server = fake_server(lambda body, n: (503, {"error": "busy"}) if n == 1 else
                         (429, {"error": "slow down"}) if n == 2 else (200, completion("Rating: [[3]]")))
    client = ChatClient(server.url, backoff=0.5, sleep=sleeps.append)
    assert grade_single(client, "q", "a").score == 3.0
    assert len(server.requests) == 3 and sleeps == [0.5, 1.0]


def test_unreachable_endpoint_gives_a_clear_error_after_retries():
    with socket.socket() as s:  # a free port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sleeps = []
    client = ChatClient(f"http://127.0.0.1:{port}", max_retries=3, backoff=0.1, sleep=sleeps.append)
    with pytest.raises(ScratchError) as e:
        client.chat([{"role": "user", "content": "hi"}])
    assert f"http://127.0.0.1:{port}/v1/chat/completions unreachable after 4 attempts" in e.value.message
    assert sleeps == [0.1, 0.2, 0.4]


def test_server_keeps_failing(fake_server):
    server = fake_server(lambda body, n: (500, {"error": "boom"}))
    with pytest.raises(ScratchError, match="unreachable after 3 attempts.*HTTP 500"):
        _client(server.url, max_retries=2).chat([{"role": "user", "content": "x"}])
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(fake_server):
    server = fake_server(lambda body, n: (401, {"error": {"message": "invalid api key"}}))
    with pytest.raises(ScratchError, match="HTTP 401.*invalid api key") as e:
        _client(server.url).chat([{"role": "user", "content": "x"}])
    assert len(server.requests) == 1 and "API key" in e.value.hint


def test_non_openai_response(fake_server):
    server = fake_server(lambda body, n: (200, b"<html>hello</html>"))
    with pytest.raises(ScratchError, match="not an OpenAI chat completion"):
        _client(server.url).chat([{"role": "user", "content": "x"}])


def test_bad_url():
    with pytest.raises(ScratchError, match="must start with http"):
        ChatClient("localhost:8000")
    assert ChatClient("http://h:1").url == "http://h:1/v1/chat/completions"
    assert ChatClient("http://h:1/v1/").url == "http://h:1/v1/chat/completions"


def test_parsers():
    assert parse_rating("ok. Rating: [[7]]") == 7.0
    assert parse_rating("Rating: 4") == 4.0
    assert parse_rating("[[11]]") is None and parse_rating("no idea") is None
    assert parse_verdict("... [[B]]") == "B" and parse_verdict("[[C]]") == "tie"
    assert parse_verdict("[[A]] or maybe [[B]]") is None


def test_a_served_model_runs_the_safety_suite_judged_by_an_endpoint(fake_server, tmp_path):
    """--model URL: the model answers over the chat API; --judge-safety: the judge labels its answers."""
    from scratchllm.cli import main

    def reply(body, n):
        text = body["messages"][-1]["content"]
        if "[[REFUSAL]]" in text:  # the judge's classification prompt
            return 200, completion("[[REFUSAL]]" if "I won't" in text else "[[COMPLIANCE]]")
        harmful = any(w in text for w in ("hurt", "attack", "injure"))
        return 200, completion("I won't help with that." if harmful else "Sure: here you go.")

    server = fake_server(reply)
    out = tmp_path / "out"
    assert main(["eval", "--tasks", "safety", "--model", server.url, "--served-model", "served-1", "--limit", "4",
                 "--judge-url", server.url, "--judge-safety", "--out", str(out), "--no-progress"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["model"]["backend"] == "openai-endpoint"
    safety = res["tasks"]["safety"]
    assert safety["classifier"] == "llm-judge" and safety["n"] == 4
    asked = [r for r in server.requests if r["model"] == "served-1"]
    judged = [r for r in server.requests if r["model"] == "default"]
    assert len(asked) == len(judged) == 4 and asked[0]["max_tokens"] == 96
    assert safety["categories"]["violence"]["refusal_rate"] == 0.75  # 3 of the 4 mention hurting someone


def test_our_own_server_as_judge_and_as_the_evaluated_model(tokenizer, tmp_path, loopback_server):
    """``scratchllm serve``'s app over loopback HTTP: judge client, position-swapped pairwise, endpoint model, CLI."""
    pytest.importorskip("fastapi")
    import torch

    from scratchllm.cli import main
    from scratchllm.eval.lm import EndpointLM, ScratchLM
    from scratchllm.model.model import ModelConfig, Transformer
    from scratchllm.serve.config import ServeConfig
    from scratchllm.serve.server import create_app

    torch.manual_seed(0)  # a context long enough for the judge's rubric prompt
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=512, d_model=32, n_layers=1,
                                    n_heads=2, n_kv_heads=2, d_ff=64, tie_embeddings=False)).eval()
    with torch.no_grad():  # a random model that never emits control tokens writes plain text to compare
        model.lm_head.weight[sorted(tokenizer.special_tokens.values())] = 0.0
    server = loopback_server(create_app(ServeConfig(model_name="tiny"), model, tokenizer))
    try:
        url = server.url + "/v1"
        # the served model answers what our in-process model answers under --chat
        question = "Why is the sky blue?"
        answer = EndpointLM(ChatClient(url, "tiny")).generate(question, max_tokens=8)
        assert answer == ScratchLM(model, tokenizer).generate(question, max_tokens=8, chat=True) and answer[0]
        judge = ChatClient(url, "tiny", max_retries=0)
        grade = grade_single(judge, question, "Rayleigh scattering.")
        assert grade.explanation == grade_single(judge, question, "Rayleigh scattering.").explanation  # greedy
        assert grade.score == parse_rating(grade.explanation)
        pair = judge_pairwise(judge, question, "Rayleigh scattering.", "No idea.")
        assert pair.winner in ("A", "B", "tie") and (pair.consistent or pair.winner == "tie")
        # the whole CLI: our server is both the evaluated model and the judge
        out = tmp_path / "out"
        assert main(["eval", "--tasks", "judge,safety", "--model", url, "--served-model", "tiny", "--limit", "2",
                     "--max-tokens", "8", "--judge-url", url, "--judge-model", "tiny", "--judge-safety",
                     "--out", str(out), "--no-progress"]) == 0
        tasks = json.loads((out / "results.json").read_text())["tasks"]
        assert tasks["judge"]["n"] == 2 and tasks["safety"]["classifier"] == "llm-judge"
    finally:
        server.stop()
