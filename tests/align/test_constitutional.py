"""Constitutional AI data: the constitution file, critique -> revise against a fake OpenAI-compatible
server on 127.0.0.1 (and our model in-process), and the resulting preference pairs."""

from __future__ import annotations

import json

import pytest

from scratchllm.align.constitutional import (
    Constitution,
    LocalChat,
    OpenAIChat,
    Principle,
    Trace,
    critique_and_revise,
    load_constitution,
    traces_to_pairs,
)
from scratchllm.align.data import load_preferences
from scratchllm.cli import main
from scratchllm.errors import ScratchError

def rude_then_polite(status: int = 200):
    """A chat endpoint that answers rudely, critiques, then revises politely (or fails with ``status``)."""

    def reply(body, n):
        if status != 200:
            return status, {"error": {"message": "nope"}}
        turns = len(body["messages"])  # 1: answer, 3: critique, 5: revision
        if turns == 3:
            text = "Critique: the answer was rude."
        elif turns == 5:
            text = f"A polite answer to: {body['messages'][0]['content']}"
        else:
            text = "A rude answer."
        return 200, {"id": "x", "object": "chat.completion", "model": body["model"], "created": 0,
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": text}}]}

    return reply


@pytest.fixture
def fake_server(fake_openai):  # tests/conftest.py
    return lambda status=200: fake_openai(rude_then_polite(status))


CONSTITUTION = Constitution([Principle("harmless", "Identify harm.", "Rewrite it harmlessly."),
                             Principle("honest", "Point out errors.", "Rewrite it honestly.")], [])


def test_critique_revise_through_an_openai_compatible_endpoint(fake_server):
    server = fake_server()
    chat = OpenAIChat(server.url, "my-model", max_new_tokens=32, temperature=0.5)
    traces = critique_and_revise(chat, ["Say hi", "Help me"], CONSTITUTION, rounds=2, seed=0)
    assert len(server.requests) == 2 + 2 * 2 * 2  # first answers, then critique + revision per round
    assert {r["model"] for r in server.requests} == {"my-model"}
    assert server.requests[0]["max_tokens"] == 32 and server.requests[0]["temperature"] == 0.5
    revise = server.requests[-1]["messages"]
    assert [m["role"] for m in revise] == ["user", "assistant", "user", "assistant", "user"]
    assert revise[3]["content"] == "Critique: the answer was rude."
    assert traces[0].initial == "A rude answer." and traces[0].final == "A polite answer to: Say hi"
    assert all(s["principle"] in {"harmless", "honest"} for t in traces for s in t.steps)
    pairs, dropped = traces_to_pairs(traces)
    assert dropped == 0 and [(p.chosen, p.rejected) for p in pairs][1] == ("A polite answer to: Help me",
                                                                            "A rude answer.")


def test_unchanged_or_empty_revisions_are_dropped():
    traces = [Trace("p1", "same", [{"principle": "x", "critique": "c", "revision": "same"}]),
              Trace("p2", "first", [{"principle": "x", "critique": "c", "revision": ""}]),
              Trace("p3", "first", [{"principle": "x", "critique": "c", "revision": "better"}])]
    pairs, dropped = traces_to_pairs(traces)
    assert dropped == 2 and pairs[0].chosen == "better" and pairs[0].rejected == "first"


def test_endpoint_errors_are_clear(fake_server):
    with pytest.raises(ScratchError, match="refused the request: HTTP 401"):
        OpenAIChat(fake_server(status=401).url, "m", max_retries=0).chat_many([[{"role": "user", "content": "x"}]])
    with pytest.raises(ScratchError, match="chat endpoint .* unreachable after 1 attempts") as e:
        OpenAIChat("http://127.0.0.1:9/v1", "m", max_retries=0, timeout=2).chat_many(
            [[{"role": "user", "content": "x"}]])
    assert "base_url" in e.value.hint


def test_local_model_answers_critiques_and_revises(make_model, tokenizer):
    chat = LocalChat(make_model(), tokenizer, max_new_tokens=4, temperature=1.0, seed=0)
    traces = critique_and_revise(chat, ["Hi", "Yo"], CONSTITUTION, rounds=1)
    assert chat.calls == 3 and all(len(t.steps) == 1 for t in traces)  # batched: one call per turn
    tiny = LocalChat(make_model(context_length=24), tokenizer, max_new_tokens=4)
    with pytest.raises(ScratchError, match="more than the model's context"):
        critique_and_revise(tiny, ["x" * 30], CONSTITUTION)


def test_constitution_file_errors(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[principles]]\nname = "a"\ncritique = "c"\n', encoding="utf-8")
    with pytest.raises(ScratchError, match="principle 0 \\(a\\) has no 'revision'"):
        load_constitution(path)
    path.write_text('prompts = ["x"]\n', encoding="utf-8")
    with pytest.raises(ScratchError, match="no \\[\\[principles\\]\\]"):
        load_constitution(path)
    shipped = load_constitution("configs/align/constitution.toml")
    assert len(shipped.principles) >= 4 and len(shipped.prompts) >= 10


def test_cli_writes_pairs_for_dpo(fake_server, tmp_path, capsys):
    server = fake_server()
    out = tmp_path / "pairs.jsonl"
    code = main(["align", "constitutional", "--config", "configs/align/constitutional.toml",
                 "constitutional.backend=openai", f"constitutional.base_url={server.url}",
                 "constitutional.n_prompts=3", f"constitutional.out={out}"])
    assert code == 0
    pairs = load_preferences(out)  # the DPO loader reads it back
    assert len(pairs) == 3 and all(p.rejected == "A rude answer." for p in pairs)
    traces = [json.loads(line) for line in out.with_suffix(".traces.jsonl").read_text().splitlines()]
    assert len(traces) == 3 and traces[0]["steps"][0]["critique"] == "Critique: the answer was rude."
    assert "3 preference pairs" in capsys.readouterr().err


def test_our_own_server_as_the_endpoint(tokenizer, loopback_server):
    """``scratchllm serve``'s app over loopback HTTP answers, critiques and revises through the chat client."""
    pytest.importorskip("fastapi")
    import torch

    from scratchllm.model.model import ModelConfig, Transformer
    from scratchllm.serve.config import ServeConfig
    from scratchllm.serve.server import create_app

    torch.manual_seed(0)  # a context long enough for the critique and revision requests
    model = Transformer(ModelConfig(vocab_size=tokenizer.vocab_size, context_length=512, d_model=32, n_layers=1,
                                    n_heads=2, n_kv_heads=2, d_ff=64, tie_embeddings=False)).eval()
    with torch.no_grad():  # never emit control tokens: every reply is plain, non-empty text
        model.lm_head.weight[sorted(tokenizer.special_tokens.values())] = 0.0
    server = loopback_server(create_app(ServeConfig(model_name="tiny"), model, tokenizer))
    try:
        url = server.url + "/v1"
        chat = OpenAIChat(url, "tiny", max_new_tokens=6, temperature=0.0, max_retries=0)
        traces = critique_and_revise(chat, ["Say hi", "Help me"], CONSTITUTION, rounds=1, seed=0)
        assert all(t.initial and t.steps[0]["critique"] and t.final for t in traces), traces
        pairs, dropped = traces_to_pairs(traces)
        assert len(pairs) + dropped == 2
    finally:
        server.stop()
