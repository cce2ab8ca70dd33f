"""``scratchllm generate | chat | quantize | serve``: inference from the command line, and the HTTP server."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from scratchllm.cli import add_alias, add_config_arguments, config_overrides
from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.infer.config import ChatConfig, GenerateConfig, QuantizeConfig
from scratchllm.tokenizer.chat import END, encode_chat

DEFAULT_SERVE_CONFIG = "configs/serve/default.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("generate", help="continue a prompt, streaming to the terminal",
                              description="Generate a continuation of a prompt with a model directory (plain, "
                                          "quantized, or a training run's latest checkpoint). Settings: "
                                          "GenerateConfig in scratchllm.infer.config, e.g. model=runs/x "
                                          "prompt='Once upon' temperature=0.")
    add_config_arguments(g, None, "temperature=0")
    _add_model_aliases(g)
    add_alias(g, "--prompt", key="prompt", help="the text to continue ('-' reads standard input)")
    add_alias(g, "--draft", key="draft", help="a small draft model directory: speculative decoding")
    add_alias(g, "--k", key="k", type=int, help="draft tokens per speculative step (default 4)")
    _add_sampling_aliases(g)
    g.set_defaults(func=cmd_generate)

    c = subparsers.add_parser("chat", help="chat interactively with a fine-tuned model",
                              description="Interactive chat using the fine-tuning chat template. Commands: "
                                          "/reset clears the conversation, /exit (or Ctrl-D) quits. Settings: "
                                          "ChatConfig in scratchllm.infer.config, e.g. model=runs/sft system='Be brief'.")
    add_config_arguments(c, None, "max_new_tokens=64")
    _add_model_aliases(c)
    add_alias(c, "--system", key="system", help="a system message")
    _add_sampling_aliases(c)
    c.set_defaults(func=cmd_chat)

    q = subparsers.add_parser("quantize", help="weight-only INT8/INT4 quantization of a model directory",
                              description="Write a quantized copy of a model directory (safetensors, loadable by "
                                          "generate/chat/serve/eval). Settings: QuantizeConfig in "
                                          "scratchllm.infer.config, e.g. model=runs/x out_dir=runs/x-int8.")
    add_config_arguments(q, None, "mode=int4")
    add_alias(q, "--model", key="model", help="model directory or training run directory")
    add_alias(q, "--out", key="out_dir", help="output directory")
    add_alias(q, "--mode", key="mode", choices=("int8", "int4"), help="int8 (default) or int4")
    add_alias(q, "--group-size", key="group_size", type=int, help="int4 group size (32, 64, 128; default 64)")
    q.set_defaults(func=cmd_quantize)

    s = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)",
                              description="Serve a model over HTTP with an OpenAI-compatible API. Settings: "
                                          "ServeConfig in scratchllm.serve.config, e.g. model=runs/x port=8000.")
    add_config_arguments(s, DEFAULT_SERVE_CONFIG, "port=8001")
    s.set_defaults(func=cmd_serve)


def _add_model_aliases(p: argparse.ArgumentParser) -> None:
    add_alias(p, "--model", key="model", help="model directory, fine-tuning run or training run directory")
    add_alias(p, "--tokenizer", key="tokenizer", help="tokenizer directory or file (default: found with the model)")
    add_alias(p, "--device", key="device", help="cpu (default), cuda, cuda:1, mps")
    add_alias(p, "--compile", key="compile", action="store_true",
              help="torch.compile the decode step: faster decoding after a compile of 5-20 s (docs/serve.md)")


def _add_sampling_aliases(p: argparse.ArgumentParser) -> None:
    a = p.add_argument_group("sampling (flags for the keys of the same names)")
    add_alias(a, "--max-new-tokens", key="max_new_tokens", type=int)
    add_alias(a, "--temperature", key="temperature", type=float, help="0 = greedy")
    add_alias(a, "--top-k", key="top_k", type=int)
    add_alias(a, "--top-p", key="top_p", type=float)
    add_alias(a, "--min-p", key="min_p", type=float)
    add_alias(a, "--repetition-penalty", key="repetition_penalty", type=float)
    add_alias(a, "--frequency-penalty", key="frequency_penalty", type=float)
    add_alias(a, "--presence-penalty", key="presence_penalty", type=float)
    add_alias(a, "--stop", key="stop", action="append", help="stop string (repeatable)")
    add_alias(a, "--seed", key="seed", type=int)


def _print_stream(deltas: Any) -> str:
    out = []
    for d in deltas:
        if d.text:
            out.append(d.text)
            sys.stdout.write(d.text)
            sys.stdout.flush()
    sys.stdout.write("\n")
    return "".join(out)


def cmd_generate(args: argparse.Namespace) -> int:
    from scratchllm.infer.generate import stream
    from scratchllm.infer.load import load_for_inference, load_model
    from scratchllm.infer.speculative import speculative_stream

    cfg = load_config(GenerateConfig, args.config, config_overrides(args))
    cfg.require_model()
    if not cfg.prompt:
        raise ScratchError("no prompt given", "pass prompt=TEXT (or --prompt TEXT; '-' reads standard input)")
    prompt_text = sys.stdin.read() if cfg.prompt == "-" else cfg.prompt
    model, tok = load_for_inference(cfg.model, cfg.tokenizer or None, cfg.device)
    prompt = tok.encode(prompt_text)
    if not prompt:
        raise ScratchError("the prompt is empty", "pass some text with prompt=TEXT (or --prompt)")
    params = cfg.sampling_params()
    if cfg.draft:
        if cfg.compile:
            raise ScratchError("--compile (compile=true) does not apply to speculative decoding (--draft)",
                              "drop one of them")
        draft = load_model(cfg.draft, cfg.device)
        deltas = speculative_stream(model, draft, prompt, params, tok, k=cfg.k)
    else:
        deltas = stream(model, prompt, params, tok, compile=cfg.compile)
    sys.stdout.write(prompt_text)
    _print_stream(deltas)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from scratchllm.infer.generate import stream
    from scratchllm.infer.load import load_for_inference

    cfg = load_config(ChatConfig, args.config, config_overrides(args))
    cfg.require_model()
    model, tok = load_for_inference(cfg.model, cfg.tokenizer or None, cfg.device)
    params = cfg.sampling_params([tok.token_id(END)])
    system = [{"role": "system", "content": cfg.system}] if cfg.system else []
    messages = list(system)
    print("chat: /reset clears the conversation, /exit or Ctrl-D quits", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        if line.strip() == "/exit":
            return 0
        if line.strip() == "/reset":
            messages = list(system)
            continue
        messages.append({"role": "user", "content": line})
        prompt, _ = encode_chat(tok, messages, add_generation_prompt=True)
        room = model.cfg.context_length - len(prompt)
        if room < 1:
            print("(the conversation fills the context window; /reset to start over)", file=sys.stderr)
            messages.pop()
            continue
        params.max_new_tokens = min(cfg.max_new_tokens, room)
        sys.stdout.write("assistant> ")
        reply = _print_stream(stream(model, prompt, params, tok, compile=cfg.compile))
        messages.append({"role": "assistant", "content": reply})


def cmd_quantize(args: argparse.Namespace) -> int:
    from scratchllm.infer.quantize import run as quantize_run

    cfg = load_config(QuantizeConfig, args.config, config_overrides(args))
    result = quantize_run(cfg)
    m = result.metrics
    print(f"wrote {result.outputs['model']} ({m['mode']}): weights {m['dense_weight_bytes'] / 2**20:.2f} MiB -> "
          f"{m['quantized_weight_bytes'] / 2**20:.2f} MiB")
    return 0


def api_key_from_env(environ: dict[str, str] | None = None) -> str:
    """The API key from $SCRATCHLLM_API_KEY_FILE (a secret file) or $SCRATCHLLM_API_KEY; "" if neither.
    For containers: a key passed as api_key=... would be visible in the process list and image config."""
    env = os.environ if environ is None else environ
    path, value = env.get("SCRATCHLLM_API_KEY_FILE", ""), env.get("SCRATCHLLM_API_KEY", "")
    if path and value:
        raise ScratchError("both SCRATCHLLM_API_KEY and SCRATCHLLM_API_KEY_FILE are set", "set only one of them")
    if not path:
        return value
    try:
        key = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ScratchError(f"cannot read the API key file {path} (SCRATCHLLM_API_KEY_FILE): {e}",
                           "check the path and that the server's user may read it") from None
    if not key:
        raise ScratchError(f"the API key file {path} (SCRATCHLLM_API_KEY_FILE) is empty",
                           "write the key into it, or unset SCRATCHLLM_API_KEY_FILE to serve without a key")
    return key


def check_readable(paths: list[Path]) -> None:
    """Every file in these directories (or these files) readable by this process, else a clear error: a model
    directory mounted into a container whose server runs as another user, written with mode 0600 files (as
    scratchllm did before its atomic writes kept the umask's modes), fails here rather than in a traceback."""
    for path in paths:
        try:
            files = sorted(path.iterdir()) if path.is_dir() else [path]
        except PermissionError:
            files = [path]
        for f in files:
            if (f.is_file() or f.is_dir()) and not os.access(f, os.R_OK | (os.X_OK if f.is_dir() else 0)):
                raise ScratchError(f"permission denied reading {f} (this server runs as uid {os.getuid()})",
                                   f"make the files readable, where they were written: chmod -R a+rX {path}")


def cmd_serve(args: argparse.Namespace) -> int:
    from scratchllm.serve.config import ServeConfig
    from scratchllm.serve.server import serve

    cfg = load_config(ServeConfig, args.config, args.overrides)  # a path or a preset's name, found from anywhere
    cfg.api_key = cfg.api_key or api_key_from_env()
    if not cfg.model:
        raise ScratchError("no model to serve", "pass model=DIR (a model directory or a training run directory)")
    from scratchllm.model.paths import resolve_model_dir

    model_dir = resolve_model_dir(cfg.model)  # fail fast with a clear message, before the server starts
    check_readable([model_dir, *([Path(cfg.tokenizer)] if cfg.tokenizer else [])])
    serve(cfg)  # checks every setting and loads the model before it binds the port (errors: exit 2)
    return 0
