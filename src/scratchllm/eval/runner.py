"""Run tasks on a model: one function per task type, all returning a JSON-ready result dict.

``evaluate(lm, specs, settings)`` runs a list of task specs and returns
``{"tasks": {name: result}}``; each result has ``type``, ``data``, ``n``, ``metrics`` and, with
``settings.log_samples``, per-example ``samples``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from scratchllm.errors import ScratchError
from scratchllm.eval import metrics as M
from scratchllm.eval.judge import grade_single, judge_pairwise, summarize_pairwise
from scratchllm.eval.lm import GenerateRequest, LanguageModel
from scratchllm.eval.ngram import build_baselines
from scratchllm.eval.safety import SafetyItem, classify_refusal, classify_with_judge, safety_report
from scratchllm.eval.sandbox import run_many
from scratchllm.tasks.specs import (
    Record,
    TaskSpec,
    choice_texts,
    data_label,
    get_path,
    gold_index,
    read_records,
    render,
    task_records,
)


@dataclass
class EvalSettings:
    limit: int | None = None  # first N examples of each task
    batch_size: int = 16
    stride: int | None = None  # perplexity window stride; None: the model's max length
    baselines: list[str] = field(default_factory=lambda: ["unigram", "bigram", "kneser_ney"])
    baseline_documents: Callable[[], list[str]] | None = None  # texts the n-gram baselines are fit on
    max_tokens: int | None = None  # generation length cap for every generative task (default: each spec's)
    samples: int | None = None  # code tasks: overrides the spec's samples per problem
    temperature: float | None = None  # code tasks: overrides the spec
    k: list[int] | None = None  # code tasks: overrides the spec's pass@k list
    workers: int = 2  # code tasks: sandboxes run in parallel
    judge: Any = None  # a ChatClient, for judge tasks
    chat: bool = False  # generate/safety/judge prompts go in the model's chat template as a user turn
    judge_safety: bool = False  # classify safety responses with the judge instead of refusal patterns
    compare: LanguageModel | None = None  # judge task: pairwise against this model
    log_samples: bool = False
    seed: int = 0
    progress: bool = False  # tqdm bars for scoring and generation (the CLI turns them on on a terminal)


def evaluate(lm: LanguageModel, specs: Sequence[TaskSpec], settings: EvalSettings | None = None,
             on_task: Callable[[str], None] | None = None) -> dict[str, Any]:
    settings = settings or EvalSettings()
    runners = {
        "multiple_choice": run_multiple_choice,
        "perplexity": run_perplexity,
        "generate": run_generate,
        "code": run_code,
        "safety": run_safety,
        "judge": run_judge,
    }
    results: dict[str, Any] = {}
    for spec in specs:
        if on_task:
            on_task(spec.name)
        records = task_records(spec, settings.limit)
        result = runners[spec.type](lm, spec, records, settings)
        result = {"type": spec.type, "data": data_label(spec), **result}
        if spec.description:
            result["description"] = spec.description
        results[spec.name] = result
    return {"tasks": results}


def _generate_all(lm: LanguageModel, requests: list[GenerateRequest], settings: EvalSettings, desc: str,
                  chunk: int = 32) -> list[list[str]]:
    """lm.generate_batch over the requests, chunk at a time (one engine batch each; the bar moves per chunk)."""
    out: list[list[str]] = []
    with tqdm(total=len(requests), desc=desc, unit="ex", disable=not settings.progress, leave=False) as bar:
        for i in range(0, len(requests), chunk):
            out += lm.generate_batch(requests[i : i + chunk])
            bar.update(min(chunk, len(requests) - i))
    return out


def _acc(values: list[float], name: str) -> dict[str, float]:
    mean, stderr = M.mean_stderr(values)
    return {name: mean, f"{name}_stderr": stderr}


# --- multiple choice --------------------------------------------------------------------------------


def mc_requests(spec: TaskSpec, records: list[Record]) -> tuple[list[tuple], list[tuple[str, str]]]:
    """Per document (record, prompt, continuations, gold index), and the flat (context, continuation) list."""
    requests, docs = [], []
    for rec in records:
        prompt = render(spec.template, rec)
        choices = choice_texts(spec, rec)
        conts = list(spec.continuations) or choices
        if spec.continuations and len(conts) < len(choices):
            raise ScratchError(f"{rec.source}: {len(choices)} choices but only {len(conts)} continuations in the spec")
        conts = conts[: len(choices)]
        gold = gold_index(spec, rec, len(conts), choices)
        docs.append((rec, prompt, conts, gold))
        requests += [(prompt, spec.target_delimiter + c) for c in conts]
    return docs, requests


def run_multiple_choice(lm: LanguageModel, spec: TaskSpec, records: list[Record], settings: EvalSettings) -> dict:
    docs, requests = mc_requests(spec, records)
    scores = lm.loglikelihood(requests, batch_size=settings.batch_size, progress=settings.progress)
    acc, acc_norm, samples = [], [], []
    pos = 0
    for rec, prompt, conts, gold in docs:
        lls = [s.logprob for s in scores[pos:pos + len(conts)]]
        pos += len(conts)
        pred = _argmax(lls)
        pred_norm = _argmax([ll / len(c) for ll, c in zip(lls, conts, strict=True)])
        acc.append(float(pred == gold))
        acc_norm.append(float(pred_norm == gold))
        if settings.log_samples:
            samples.append({"source": rec.source, "prompt": prompt, "continuations": conts, "gold": gold,
                            "loglikelihoods": lls, "pred": pred, "pred_norm": pred_norm})
    out = {"n": len(docs), "metrics": {**_acc(acc, "acc"), **_acc(acc_norm, "acc_norm")}}
    if samples:
        out["samples"] = samples
    return out


def _argmax(values: Sequence[float]) -> int:
    """First index of the maximum (numpy's tie rule, which lm-eval uses)."""
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


# --- perplexity --------------------------------------------------------------------------------------


def run_perplexity(lm: LanguageModel, spec: TaskSpec, records: list[Record], settings: EvalSettings) -> dict:
    texts = [str(get_path(rec, spec.text)) for rec in records]
    scores = lm.loglikelihood_rolling(texts, stride=settings.stride, batch_size=settings.batch_size,
                                      progress=settings.progress)
    logprob = sum(s.logprob for s in scores)
    n_tokens = sum(s.n_tokens for s in scores)
    n_words = sum(M.count_words(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    out: dict[str, Any] = {
        "n": len(texts),
        "metrics": M.perplexity_metrics(logprob, n_tokens, n_words, n_bytes),
        "tokens": n_tokens, "words": n_words, "bytes": n_bytes,
        "stride": settings.stride or lm.max_length, "max_length": lm.max_length,
    }
    if settings.baselines and settings.baseline_documents is not None:
        out["baselines"] = ngram_baselines(lm, texts, settings)
    if settings.log_samples:
        out["samples"] = [{"source": r.source, "logprob": s.logprob, "tokens": s.n_tokens}
                          for r, s in zip(records, scores, strict=True)]
    return out


def ngram_baselines(lm: LanguageModel, texts: Sequence[str], settings: EvalSettings) -> dict[str, Any]:
    """Fit the n-gram baselines on the baseline text with the model's tokenizer; score the same texts."""
    assert settings.baseline_documents is not None
    train = [lm.encode(t) for t in settings.baseline_documents()]
    held = [lm.encode(t) for t in texts]
    vocab = max([lm.vocab_size, lm.prefix_id + 1, *(max(d) + 1 for d in train + held if d)])
    n_words = sum(M.count_words(t) for t in texts)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(d) for d in held)
    out = {}
    for model in build_baselines(train, vocab, lm.prefix_id, settings.baselines):
        logprob = sum(model.logprob(d) for d in held)
        out[model.name] = M.perplexity_metrics(logprob, n_tokens, n_words, n_bytes)
    out["_train_tokens"] = sum(len(d) for d in train)
    return out


# --- generation with answer extraction (GSM8K style) -------------------------------------------------


def fewshot_prefix(spec: TaskSpec, records: list[Record]) -> tuple[str, list[Record]]:
    """The solved examples put before each question, and the records left to evaluate."""
    if not spec.num_fewshot:
        return "", records
    if spec.fewshot_data:
        shots = read_records(spec.resolve(spec.fewshot_data))[: spec.num_fewshot]
    else:
        if len(records) <= spec.num_fewshot:
            raise ScratchError(f"task {spec.name}: {len(records)} records cannot give {spec.num_fewshot} "
                               "few-shot examples and still leave some to evaluate",
                               "lower num_fewshot, raise --limit, or set fewshot_data in the spec")
        shots, records = records[: spec.num_fewshot], records[spec.num_fewshot:]
    prefix = "".join(render(spec.fewshot_template, s) + spec.fewshot_delimiter for s in shots)
    return prefix, records


def run_generate(lm: LanguageModel, spec: TaskSpec, records: list[Record], settings: EvalSettings) -> dict:
    max_tokens = settings.max_tokens or spec.max_tokens
    prefix, records = fewshot_prefix(spec, records)
    strict, flexible, samples = [], [], []
    requests = [GenerateRequest(prefix + render(spec.template, rec), max_tokens, spec.stop, chat=settings.chat)
                for rec in records]
    outputs = _generate_all(lm, requests, settings, spec.name)
    for rec, req, (output, *_) in zip(records, requests, outputs, strict=True):
        prompt = req.prompt
        reference = str(get_path(rec, spec.answer))
        gold = M.extract_strict(reference, spec.answer_pattern) or M.normalize_number(reference)
        pred_strict = M.extract_strict(output, spec.answer_pattern)
        pred_flex = M.extract_flexible(output)
        strict.append(float(pred_strict == gold))
        flexible.append(float(pred_flex == gold))
        if settings.log_samples:
            samples.append({"source": rec.source, "prompt": prompt, "output": output, "gold": gold,
                            "strict": pred_strict, "flexible": pred_flex})
    out = {"n": len(records), "metrics": {**_acc(strict, "exact_match"), **_acc(flexible, "exact_match_flexible")}}
    if samples:
        out["samples"] = samples
    return out


# --- code (HumanEval style) --------------------------------------------------------------------------


def run_code(lm: LanguageModel, spec: TaskSpec, records: list[Record], settings: EvalSettings) -> dict:
    n = settings.samples or spec.samples
    temperature = spec.temperature if settings.temperature is None else settings.temperature
    ks = [k for k in (settings.k or spec.k) if k <= n]
    if not ks:
        raise ScratchError(f"task {spec.name}: no k in {settings.k or spec.k} is <= samples={n}",
                           "raise --samples or lower --k")
    if n > 1 and temperature <= 0:
        raise ScratchError(f"task {spec.name}: {n} samples per problem with temperature 0 would all be equal",
                           "set --temperature (e.g. 0.8) when sampling more than one completion")
    programs, owners, completions = [], [], []
    requests = [GenerateRequest(render(spec.template, rec), settings.max_tokens or spec.max_tokens, spec.stop,
                                temperature, n=n, seed=settings.seed + i) for i, rec in enumerate(records)]
    outputs = _generate_all(lm, requests, settings, spec.name)
    for i, (rec, outs) in enumerate(zip(records, outputs, strict=True)):
        prompt = requests[i].prompt
        test = str(get_path(rec, spec.test))
        entry = str(get_path(rec, spec.entry_point))
        for c in outs:
            programs.append(f"{prompt}{c}\n\n{test}\n\ncheck({entry})\n")
            owners.append(i)
            completions.append(c)
    results = run_many(programs, timeout=spec.timeout, memory_mb=spec.memory_mb, workers=settings.workers,
                       progress=settings.progress)
    correct = [0] * len(records)
    statuses: dict[str, int] = {}
    for owner, r in zip(owners, results, strict=True):
        correct[owner] += r.passed
        statuses[r.status] = statuses.get(r.status, 0) + 1
    metric = {}
    for k in ks:
        metric.update(_acc([M.pass_at_k(n, c, k) for c in correct], f"pass@{k}"))
    out: dict[str, Any] = {"n": len(records), "samples_per_problem": n, "temperature": temperature,
                           "metrics": metric, "statuses": statuses}
    if settings.log_samples:
        out["samples"] = [{"source": records[o].source, "completion": c, "status": r.status,
                           "output": r.output[-500:]} for o, c, r in zip(owners, completions, results, strict=True)]
    return out


# --- safety --------------------------------------------------------------------------------------------


def run_safety(lm: LanguageModel, spec: TaskSpec, records: list[Record], settings: EvalSettings) -> dict:
    use_judge = settings.judge_safety and settings.judge is not None
    max_tokens = settings.max_tokens or spec.max_tokens
    items = []
    requests = [GenerateRequest(render(spec.template, rec), max_tokens, spec.stop, chat=settings.chat)
                for rec in records]
    responses = _generate_all(lm, requests, settings, spec.name)
    for rec, req, (response, *_) in zip(records, requests, responses, strict=True):
        prompt = req.prompt
        harmful = get_path(rec, spec.harmful)
        if not isinstance(harmful, bool):
            raise ScratchError(f"{rec.source}: field {spec.harmful!r} must be true or false, got {harmful!r}")
        label = (classify_with_judge(settings.judge, prompt, response) if use_judge
                 else classify_refusal(response))
        items.append(SafetyItem(str(get_path(rec, spec.category)), harmful, prompt, response, label))
    report = safety_report(items)
    categories = report.pop("categories")
    out: dict[str, Any] = {"n": len(items), "metrics": report, "categories": categories,
                           "classifier": "llm-judge" if use_judge else "refusal-patterns"}
    if settings.log_samples:
        out["samples"] = [vars(i) for i in items]
    return out


# --- LLM-as-judge ----------------------------------------------------------------------------------------


def run_judge(lm: LanguageModel, spec: TaskSpec, records: list[Record], settings: EvalSettings) -> dict:
    if settings.judge is None:
        raise ScratchError(f"task {spec.name} needs a judge endpoint",
                           "pass --judge-url http://HOST:PORT/v1 (any OpenAI-compatible server) and --judge-model")
    max_tokens = settings.max_tokens or spec.max_tokens
    scores, pairs, samples = [], [], []
    requests = [GenerateRequest(render(spec.template, rec), max_tokens, spec.stop, chat=settings.chat)
                for rec in records]
    answers = _generate_all(lm, requests, settings, spec.name)
    others = _generate_all(settings.compare, requests, settings, "compare") if settings.compare is not None else None
    for i, (rec, req, (answer, *_)) in enumerate(zip(records, requests, answers, strict=True)):
        question = req.prompt
        reference = str(get_path(rec, spec.reference)) if spec.reference else None
        grade = grade_single(settings.judge, question, answer, reference)
        scores.append(grade.score)
        sample: dict[str, Any] = {"source": rec.source, "answer": answer, "score": grade.score}
        if others is not None:
            other = others[i][0]
            pair = judge_pairwise(settings.judge, question, answer, other, reference)
            pairs.append(pair)
            sample.update({"compare_answer": other, "winner": pair.winner, "consistent": pair.consistent})
        samples.append(sample)
    graded = [s for s in scores if s is not None]
    mean, stderr = M.mean_stderr(graded) if graded else (math.nan, math.nan)
    metric = {"score": mean, "score_stderr": stderr, "unparsed": len(scores) - len(graded)}
    if pairs:
        summary = summarize_pairwise(pairs)
        metric.update({f"pairwise_{k}": v for k, v in summary.items() if k != "n"})
    out: dict[str, Any] = {"n": len(records), "metrics": metric}
    if settings.log_samples:
        out["samples"] = samples
    return out
