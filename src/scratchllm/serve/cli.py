"""``scratchllm generate | chat | quantize | serve``: inference from the command line, and the HTTP server."""

from __future__ import annotations

# The stage's own modules are imported inside the commands: they load torch (or numpy, pyarrow...), and
# `scratchllm --help` imports every command module (measured: --help stays at ~0.1 s, without torch).

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from scratchllm.cli import add_config_arguments
from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.tokenizer.chat import END, encode_chat

DEFAULT_SERVE_CONFIG = "configs/serve/default.toml"


def register(subparsers: argparse._SubParsersAction) -> None:
    g = subparsers.add_parser("generate", help="continue a prompt, streaming to the terminal",
                              description="Generate a continuation of --prompt with a model directory (plain, "
                                          "quantized, or a training run's latest checkpoint).")
    _add_model_arguments(g)
    g.add_argument("--prompt", required=True, help="the text to continue ('-' reads standard input)")
    g.add_argument("--draft", help="a small draft model directory: speculative decoding")
    g.add_argument("--k", type=int, default=4, help="draft tokens per speculative step (default 4)")
    _add_sampling_arguments(g, max_new_tokens=128)
    g.set_defaults(func=cmd_generate)

    c = subparsers.add_parser("chat", help="chat interactively with a fine-tuned model",
                              description="Interactive chat using the fine-tuning chat template. Commands: "
                                          "/reset clears the conversation, /exit (or Ctrl-D) quits.")
    _add_model_arguments(c)
    c.add_argument("--system", help="a system message")
    _add_sampling_arguments(c, max_new_tokens=256, temperature=0.7)
    c.set_defaults(func=cmd_chat)

    q = subparsers.add_parser("quantize", help="weight-only INT8/INT4 quantization of a model directory",
                              description="Write a quantized copy of a model directory (safetensors, loadable by "
                                          "generate/chat/serve).")
    q.add_argument("--model", required=True, help="model directory or training run directory")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--mode", choices=("int8", "int4"), default="int8")
    q.add_argument("--group-size", type=int, default=64, help="int4 group size (32, 64, 128; default 64)")
    q.set_defaults(func=cmd_quantize)

    s = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server (/v1/completions, /v1/chat/completions)",
                              description="Serve a model over HTTP with an OpenAI-compatible API. Settings: "
                                          "ServeConfig in scratchllm.serve.config, e.g. model=runs/x port=8000.")
    add_config_arguments(s, DEFAULT_SERVE_CONFIG, "port=8001")
    s.set_defaults(func=cmd_serve)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory, fine-tuning run or training run directory")
    p.add_argument("--tokenizer", help="tokenizer directory or file (default: the one inside the model directory)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the decode step: faster decoding after a compile of 5-20 s (docs/serve.md)")


def _add_sampling_arguments(p: argparse.ArgumentParser, max_new_tokens: int, temperature: float = 1.0) -> None:
    a = p.add_argument_group("sampling")
    a.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    a.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    a.add_argument("--top-k", type=int, default=0)
    a.add_argument("--top-p", type=float, default=1.0)
    a.add_argument("--min-p", type=float, default=0.0)
    a.add_argument("--repetition-penalty", type=float, default=1.0)
    a.add_argument("--frequency-penalty", type=float, default=0.0)
    a.add_argument("--presence-penalty", type=float, default=0.0)
    a.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    a.add_argument("--seed", type=int)


def _params(args: argparse.Namespace, stop_token_ids: list[int] | None = None) -> Any:
    from scratchllm.infer.sampling import SamplingParams

    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, frequency_penalty=args.frequency_penalty,
        presence_penalty=args.presence_penalty, stop=list(args.stop), stop_token_ids=stop_token_ids or [],
        seed=args.seed)
    params.validate()
    return params


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
    from scratchllm.infer.load import load_for_inference
    from scratchllm.infer.generate import stream

    prompt_text = sys.stdin.read() if args.prompt == "-" else args.prompt
    model, tok = load_for_inference(args.model, args.tokenizer, args.device)
    prompt = tok.encode(prompt_text)
    if not prompt:
        raise ScratchError("the prompt is empty", "pass some text with --prompt")
    params = _params(args)
    if args.draft:
        if args.compile:
            raise ScratchError("--compile does not apply to speculative decoding (--draft)", "drop one of them")
        from scratchllm.infer.quantize import load_model
        from scratchllm.model.paths import resolve_model_dir
        from scratchllm.infer.speculative import speculative_stream

        draft = load_model(resolve_model_dir(args.draft), args.device).eval()
        deltas = speculative_stream(model, draft, prompt, params, tok, k=args.k)
    else:
        deltas = stream(model, prompt, params, tok, compile=args.compile)
    sys.stdout.write(prompt_text)
    _print_stream(deltas)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from scratchllm.infer.load import load_for_inference
    from scratchllm.infer.generate import stream

    model, tok = load_for_inference(args.model, args.tokenizer, args.device)
    params = _params(args, [tok.token_id(END)])
    system = [{"role": "system", "content": args.system}] if args.system else []
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
        params.max_new_tokens = min(args.max_new_tokens, room)
        sys.stdout.write("assistant> ")
        reply = _print_stream(stream(model, prompt, params, tok, compile=args.compile))
        messages.append({"role": "assistant", "content": reply})


def cmd_quantize(args: argparse.Namespace) -> int:
    from scratchllm.model.paths import resolve_model_dir
    from scratchllm.infer.quantize import load_model, quantize, save_quantized, weight_bytes

    src = resolve_model_dir(args.model)
    model = load_model(src)
    if getattr(model, "quantization", None):
        raise ScratchError(f"{src} is already quantized", "quantize the original full-precision model")
    before = weight_bytes(model)
    quantize(model, args.mode, args.group_size)
    out = Path(args.out)
    save_quantized(model, out)
    from scratchllm.model.paths import find_tokenizer

    tok_dir = find_tokenizer(args.model, src)
    for f in [*tok_dir.glob("tokenizer*.json"), *tok_dir.glob("scratchllm_tokenizer.json")] if tok_dir else []:
        shutil.copy2(f, out / f.name)  # keep the model directory self-contained
    print(f"wrote {out} ({args.mode}): weights {before / 2**20:.2f} MiB -> {weight_bytes(model) / 2**20:.2f} MiB")
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
