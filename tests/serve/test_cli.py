"""'scratchllm generate | chat | quantize | serve' end to end on a tiny model directory."""

from __future__ import annotations

import io

import pytest

from scratchllm.cli import main
from scratchllm.infer.generate import complete
from scratchllm.infer.sampling import SamplingParams

from .conftest import tiny_model


@pytest.fixture
def model_dir(tmp_path, byte_tokenizer):
    model = tiny_model(vocab_size=byte_tokenizer.vocab_size)
    d = tmp_path / "m"
    model.save_pretrained(d)
    byte_tokenizer.save_pretrained(d)
    return d, model


def test_generate_prints_prompt_and_greedy_continuation(model_dir, byte_tokenizer, capsys):
    d, model = model_dir
    assert main(["generate", "--model", str(d), "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "10"]) == 0
    want = complete(model, [byte_tokenizer.encode("hi")], SamplingParams(max_new_tokens=10, temperature=0),
                    byte_tokenizer)[0].text
    assert capsys.readouterr().out == "hi" + want + "\n"
    # speculative decoding with the model as its own draft prints the same
    assert main(["generate", "--model", str(d), "--prompt", "hi", "--temperature", "0", "--max-new-tokens", "10",
                 "--draft", str(d)]) == 0
    assert capsys.readouterr().out == "hi" + want + "\n"


def test_quantize_then_generate(model_dir, tmp_path, capsys):
    d, _ = model_dir
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(d), "--out", str(out), "--mode", "int4", "--group-size", "32"]) == 0
    assert "int4" in capsys.readouterr().out and (out / "quantization.json").is_file()
    assert main(["generate", "--model", str(out), "--prompt", "hi", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out.startswith("hi")


def test_chat_keeps_the_conversation(model_dir, monkeypatch, capsys):
    d, _ = model_dir
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nagain\n/exit\n"))
    assert main(["chat", "--model", str(d), "--temperature", "0", "--max-new-tokens", "8"]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 2


def test_cli_errors(tmp_path, capsys, model_dir):
    assert main(["serve"]) == 2
    assert "no model" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert "not found" in capsys.readouterr().err
    d, _ = model_dir
    assert main(["generate", "--model", str(d), "--prompt", "x", "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_training_run_directory_serves_its_latest_checkpoint(model_dir, tmp_path, byte_tokenizer, capsys):
    from scratchllm.infer.load import load_for_inference

    d, model = model_dir
    run = tmp_path / "run"
    for step in (5, 10):
        ckpt = run / "checkpoints" / f"step_{step:06d}"
        tiny_model(seed=step, vocab_size=byte_tokenizer.vocab_size).save_pretrained(ckpt)
        (ckpt / "checksums.json").write_text("{}")
    (run / "checkpoints" / "latest").write_text("step_000010")
    loaded, _ = load_for_inference(run, d)
    want = tiny_model(seed=10, vocab_size=byte_tokenizer.vocab_size)
    assert all((a == b).all() for a, b in zip(loaded.state_dict().values(), want.state_dict().values()))
    assert main(["generate", "--model", str(run), "--prompt", "x", "--max-new-tokens", "2"]) == 2
    assert "--tokenizer" in capsys.readouterr().err  # no tokenizer in a run directory: say how to pass one


def test_serve_command_in_a_subprocess(model_dir):
    """The real 'scratchllm serve' process: loads the model at startup, /ready turns 200, stops on SIGTERM."""
    import socket
    import subprocess
    import sys
    import time

    import httpx

    d, _ = model_dir
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "serve", f"model={d}", f"port={port}",
                             "model_name=tiny"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "tiny", "prompt": "a",
                                                                      "max_tokens": 3}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=20)
    assert '"event": "request"' in out and '"status": 200' in out  # structured JSON log lines
    assert f"at http://127.0.0.1:{port}/v1 (port {port}" in out  # the start-up line says where it listens


def test_api_key_from_the_environment_or_a_secret_file(tmp_path, model_dir, monkeypatch):
    """Containers pass the key as $SCRATCHLLM_API_KEY or a secret file, never on the command line."""
    from scratchllm.errors import ScratchError
    from scratchllm.serve.cli import api_key_from_env

    secret = tmp_path / "api_key"
    secret.write_text("sk-from-file\n")
    assert api_key_from_env({}) == ""
    assert api_key_from_env({"SCRATCHLLM_API_KEY": "sk-env"}) == "sk-env"
    assert api_key_from_env({"SCRATCHLLM_API_KEY_FILE": str(secret)}) == "sk-from-file"
    for env, message in [({"SCRATCHLLM_API_KEY": "a", "SCRATCHLLM_API_KEY_FILE": str(secret)}, "both"),
                         ({"SCRATCHLLM_API_KEY_FILE": str(tmp_path / "missing")}, "cannot read"),
                         ({"SCRATCHLLM_API_KEY_FILE": str(tmp_path)}, "cannot read")]:
        with pytest.raises(ScratchError, match=message):
            api_key_from_env(env)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ScratchError, match="is empty"):
        api_key_from_env({"SCRATCHLLM_API_KEY_FILE": str(tmp_path / "empty")})

    # `scratchllm serve` uses it; an api_key= setting wins.
    import scratchllm.serve.server as server

    served = []
    monkeypatch.setattr(server, "serve", served.append)
    monkeypatch.setenv("SCRATCHLLM_API_KEY_FILE", str(secret))
    d, _ = model_dir
    assert main(["serve", f"model={d}"]) == 0
    assert main(["serve", f"model={d}", "api_key=sk-arg"]) == 0
    assert [c.api_key for c in served] == ["sk-from-file", "sk-arg"]


def test_serve_names_an_unreadable_model_file(model_dir, monkeypatch, capsys):
    """A model directory with 0600 files mounted into a container whose server runs as another user."""
    import os

    import scratchllm.serve.server as server

    d, _ = model_dir
    monkeypatch.setattr(server, "serve", lambda cfg: pytest.fail("the server must not start"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: not str(p).endswith("config.json") and real_access(p, mode))
    assert main(["serve", f"model={d}"]) == 2
    err = capsys.readouterr().err
    assert f"permission denied reading {d / 'config.json'}" in err and f"chmod -R a+rX {d}" in err


def test_generate_chat_quantize_take_a_config_file_and_overrides(model_dir, tmp_path, byte_tokenizer, monkeypatch,
                                                                  capsys):
    """--config FILE + key=value is the same command as the flags, which remain as aliases of those keys."""
    d, model = model_dir
    want = complete(model, [byte_tokenizer.encode("hi")], SamplingParams(max_new_tokens=6, temperature=0),
                    byte_tokenizer)[0].text
    cfg = tmp_path / "gen.toml"
    cfg.write_text(f'model = "{d}"\nprompt = "hi"\ntemperature = 0.0\nmax_new_tokens = 50\n')
    assert main(["generate", "--config", str(cfg), "max_new_tokens=6"]) == 0  # the override wins over the file
    assert capsys.readouterr().out == "hi" + want + "\n"
    assert main(["generate", f"model={d}", "prompt=hi", "temperature=0", "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == "hi" + want + "\n"
    assert main(["generate", "--config", str(cfg), "--max-new-tokens", "6", "max_new_tokens=40"]) == 0
    assert capsys.readouterr().out == "hi" + want + "\n"  # a flag wins over the same key=value

    out = tmp_path / "q"
    qcfg = tmp_path / "q.toml"
    qcfg.write_text(f'model = "{d}"\nmode = "int4"\n')
    assert main(["quantize", "--config", str(qcfg), f"out_dir={out}", "group_size=32"]) == 0
    assert '"group_size": 32' in (out / "quantization.json").read_text()
    assert (out / "tokenizer.json").is_file() or (out / "scratchllm_tokenizer.json").is_file()
    assert main(["quantize", f"model={d}", "--out", str(tmp_path / "q8")]) == 0
    assert '"mode": "int8"' in (tmp_path / "q8" / "quantization.json").read_text()

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/exit\n"))
    assert main(["chat", f"model={d}", "temperature=0", "max_new_tokens=4", "system=Be brief."]) == 0
    assert capsys.readouterr().out.count("assistant> ") == 1


@pytest.mark.parametrize("command", [["generate"], ["chat"], ["quantize"], ["eval"], ["export", "hf"], ["serve"],
                                     ["train"], ["pipeline"], ["model", "info"]])
def test_missing_config_file_is_the_same_error_everywhere(command, tmp_path, capsys):
    assert main([*command, "--config", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert f"error: config file not found: {tmp_path / 'nope.toml'}" in err and "fix: give a path" in err


@pytest.mark.parametrize("command, key", [(["generate"], "tempreature=0"), (["quantize"], "outdir=x"),
                                          (["chat"], "sytem=x")])
def test_unknown_key_is_named(command, key, capsys):
    assert main([*command, key]) == 2
    assert f"unknown config key {key.partition('=')[0]!r}" in capsys.readouterr().err


def test_generate_and_quantize_say_what_is_missing(capsys):
    assert main(["generate", "prompt=x"]) == 2
    assert "no model given" in capsys.readouterr().err
    assert main(["quantize", "model=x"]) == 2
    assert "out_dir" in capsys.readouterr().err
