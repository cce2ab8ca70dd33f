"""``run(EvalConfig) -> StageResult``: the one body of ``scratchllm eval`` and the pipeline's eval stage.

Loads the model (``load_lm``: ours, Hugging Face, or a chat endpoint), runs the tasks
(``runner.evaluate``), writes ``results.json``/``.md``/``.html`` (and ``generations.json`` when
``generations.prompts`` is set) into ``out_dir``. The command prints the result; the pipeline wires
its paths into the config and reads the outputs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from scratchllm import __version__
from scratchllm.client import ChatClient
from scratchllm.corpus.embedded import embedded_text
from scratchllm.corpus.shards import iter_documents, load_manifest
from scratchllm.errors import ScratchError
from scratchllm.eval.config import EvalConfig, GenerationsConfig
from scratchllm.eval.lm import EndpointLM, LanguageModel, ScratchLM, load_lm
from scratchllm.eval.report import write_results
from scratchllm.eval.runner import EvalSettings, evaluate
from scratchllm.infer.generate import sample
from scratchllm.io import atomic_write_text, read_text
from scratchllm.stage import StageResult
from scratchllm.tasks.specs import resolve_tasks
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import END, encode_chat

BASELINE_BYTES_PER_DOMAIN = 1_000_000  # of the embedded corpus, when no baseline_text is given
ENDPOINT_TYPES = ("generate", "safety", "judge")  # task types a chat endpoint can run


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run(cfg: EvalConfig, log: Callable[[str], None] = _stderr) -> StageResult:
    """Evaluate ``cfg.model`` on ``cfg.tasks``. Outputs: ``dir`` (out_dir), ``results`` (results.json),
    the other files written; ``generations`` when there were prompts. Metrics: each task's metrics."""
    if not (cfg.tasks or cfg.heldout_data) or not cfg.model:
        raise ScratchError("--tasks and --model are required (tasks=[...] model=DIR)",
                           "e.g. scratchllm eval --tasks ppl,mc --model runs/model")
    specs = resolve_tasks(list(cfg.tasks), dict(cfg.data))  # fail on bad tasks before loading
    endpoint = cfg.model.startswith(("http://", "https://"))
    if endpoint:
        scored = [s.name for s in specs if s.type not in ENDPOINT_TYPES] + (["heldout"] if cfg.heldout_data else [])
        if scored:
            raise ScratchError(f"{', '.join(scored)} cannot run on an endpoint model: it needs log-likelihoods "
                               "or raw completions, and a chat API gives neither",
                               "run them on the model directory; endpoints run generate, safety and judge tasks")
    api_key = os.environ.get(cfg.api_key_env)
    judge = None
    if cfg.judge_safety or any(s.type == "judge" for s in specs):
        if not cfg.judge_url:
            raise ScratchError("judge tasks and --judge-safety need --judge-url (judge_url=URL)",
                               "any OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
        judge = ChatClient(cfg.judge_url, cfg.judge_model, api_key, timeout=cfg.request_timeout,
                           max_retries=cfg.retries)
    if endpoint:
        lm: LanguageModel = EndpointLM(ChatClient(cfg.model, cfg.served_model, api_key, timeout=cfg.request_timeout,
                                                  max_retries=cfg.retries, role="model endpoint",
                                                  url_setting="--model"))
    else:
        lm = load_lm(cfg.model, cfg.tokenizer or None, cfg.backend, cfg.device, name=cfg.name or None)
    compare = load_lm(cfg.compare_model, None, cfg.backend, cfg.device) if cfg.compare_model else None
    if cfg.chat and not endpoint:  # fail now, not after the scoring tasks have run
        for model in (lm, compare):
            if model is not None:
                model.chat_prompt("")
    if cfg.generations.prompts and not isinstance(lm, ScratchLM):
        raise ScratchError("generations need a scratchllm model (they sample with our engine)",
                           "set generations.prompts=[] for this model")
    out = Path(cfg.out_dir) if cfg.out_dir is not None else Path("runs") / "eval" / lm.name
    if cfg.heldout_data:
        heldout = write_heldout_task(Path(cfg.heldout_data), out / "heldout", cfg.heldout_documents, lm)
        specs = [*resolve_tasks([str(heldout)]), *specs]
    settings = EvalSettings(
        limit=cfg.limit, batch_size=cfg.batch_size, stride=cfg.stride, baselines=list(cfg.baselines),
        baseline_documents=baseline_loader(cfg.baseline_text, lm, cfg.baseline_train_tokens),
        max_tokens=cfg.max_tokens, samples=cfg.samples, temperature=cfg.temperature,
        k=list(cfg.k) if cfg.k else None, judge=judge, chat=cfg.chat, judge_safety=cfg.judge_safety,
        compare=compare, log_samples=cfg.log_samples, seed=cfg.seed,
        progress=cfg.progress and sys.stderr.isatty(),
    )
    torch.manual_seed(cfg.seed)
    results = evaluate(lm, specs, settings, on_task=lambda name: log(f"running {name} ..."))
    results = {
        "model": {"name": lm.name, "path": cfg.model if endpoint else str(Path(cfg.model).resolve()), **lm.info},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "settings": {"limit": cfg.limit, "batch_size": cfg.batch_size, "stride": cfg.stride or lm.max_length,
                     "seed": cfg.seed, "baselines": list(cfg.baselines)},
        **results,
        "scratchllm_version": __version__,
    }
    written = write_results(results, out)
    outputs: dict[str, Path] = {"dir": out, "results": out / "results.json"}
    outputs.update({p.name: p for p in written})
    if cfg.generations.prompts:
        assert isinstance(lm, ScratchLM)
        texts = generations(lm.model, lm.tok, cfg.generations, cfg.seed)
        atomic_write_text(out / "generations.json", json.dumps(texts, indent=1) + "\n")
        outputs["generations"] = out / "generations.json"
    return StageResult(outputs=outputs, metrics={"tasks": {k: r["metrics"] for k, r in results["tasks"].items()}})


# --- text from a prepared data folder -----------------------------------------------------------------


def _data_decoder(data_dir: Path, lm: Any) -> tuple[Callable[[list[int]], str], int | None]:
    """(decode, eos id) for a prepared data folder's token ids: the tokenizer the shards were made with
    (the model's may differ; the baselines then re-encode the text with the model's), else the model's."""
    tok_path = Path(str(load_manifest(data_dir)[1].get("tokenizer", "")))
    if str(tok_path) and tok_path.exists():
        tok = Tokenizer.load(tok_path)
        return tok.decode, tok.eos_id
    return lm.decode, None


def _documents(data_dir: Path, split: str, lm: Any, budget: int = 0, max_documents: int = 0) -> list[str]:
    """The documents of a split as text: up to ``budget`` tokens or ``max_documents`` documents (0: all)."""
    decode, eos = _data_decoder(data_dir, lm)
    texts, n = [], 0
    for _, ids in iter_documents(data_dir, split):
        ids = [int(i) for i in ids if int(i) != eos]
        if split != "train" and not ids:
            continue
        texts.append(decode(ids))
        n += len(ids)
        if (budget and n >= budget) or (max_documents and len(texts) >= max_documents):
            break
    return texts


def baseline_loader(files: list[str], lm: Any, budget: int = 2_000_000) -> Callable[[], list[str]]:
    """What the n-gram baselines are fit on, read when first needed: each file's text, or a prepared data
    folder's train split (up to ``budget`` tokens; 0: all); with no files, the embedded corpus."""
    def load() -> list[str]:
        if not files:
            return embedded_text(max_bytes_per_domain=BASELINE_BYTES_PER_DOMAIN).split("\n\n")
        texts: list[str] = []
        for f in files:
            if (Path(f) / "manifest.json").is_file():  # prepared data: its train split, your corpus
                texts += _documents(Path(f), "train", lm, budget=budget)
            else:
                texts.append(read_text(f))
        return texts

    cache: list[list[str]] = []

    def cached() -> list[str]:  # the pipeline evaluates several models with one loader
        if not cache:
            cache.append(load())
        return cache[0]

    return cached


def write_heldout_task(data_dir: Path, out: Path, documents: int, lm: Any) -> Path:
    """A prepared data folder's val split (up to ``documents`` documents; 0: all) as the perplexity task
    ``heldout`` in ``out`` (``scratchllm eval --tasks out/task.toml`` reruns it). Returns its task.toml."""
    texts = _documents(Path(data_dir), "val", lm, max_documents=documents)
    if not texts:
        raise ScratchError(f"the data in {data_dir} has no val documents for held-out perplexity",
                           "set data.val_fraction > 0")
    atomic_write_text(out / "data.jsonl", "".join(json.dumps({"text": t}) + "\n" for t in texts))
    atomic_write_text(out / "task.toml", (
        'name = "heldout"\ntype = "perplexity"\n'
        f'description = "Held-out perplexity on {len(texts)} documents of this run\'s val split"\n'
        'data = "data.jsonl"\ntext = "text"\n'))
    return out / "task.toml"


# --- sample generations ---------------------------------------------------------------------------------


def generations(model: Any, tok: Any, g: GenerationsConfig, seed: int) -> list[dict[str, str]]:
    """Continuations of ``g.prompts``: plain text, or a user turn in the chat format (see GenerationsConfig)."""
    prompts = []
    for prompt in g.prompts:
        if g.chat:
            system = [{"role": "system", "content": g.system}] if g.system else []
            ids, _ = encode_chat(tok, [*system, {"role": "user", "content": prompt}], add_generation_prompt=True)
        else:
            ids = tok.encode(prompt) or [tok.eos_id]
        prompts.append(ids)
    # chat: greedy (top-k 1), stopping at the end of the turn; text: sampled, stopping at <|eos|>
    stop, top_k = (tok.special_tokens.get(END), 1) if g.chat else (tok.eos_id, g.top_k)
    news = sample(model, prompts, g.max_tokens, g.temperature, top_k, seed, stop)
    return [{"prompt": p, "format": "chat" if g.chat else "text", "completion": tok.decode(new)}
            for p, new in zip(g.prompts, news, strict=True)]
