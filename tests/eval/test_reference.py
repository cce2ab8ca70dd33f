"""Agreement with lm-evaluation-harness (the reference), on our tiny model exported to HF format.

lm-eval runs its ``hf`` model type (HFLM over transformers' LlamaForCausalLM) on local task YAMLs
written independently of our TOML specs over the same JSONL files; we run our scoring on our own
Transformer. The requests (context, continuation), per-request log-likelihoods, accuracies and
perplexities must agree.
"""

from __future__ import annotations

import math

import pytest

from scratchllm.eval.reference import hf_lm, run_lm_eval, write_task_dir
from scratchllm.eval.runner import EvalSettings, evaluate
from scratchllm.tasks.specs import resolve_tasks, task_records

pytest.importorskip("lm_eval")
pytest.importorskip("transformers")

# The default run checks mmlu (letter answers, many left-truncated requests), arc (full-text
# choices of different lengths, where acc_norm is a different metric from acc; label answers) and perplexity;
# hellaswag adds nothing new and runs with the slow tests.
FAST = ["mmlu", "arc", "ppl"]


@pytest.fixture(scope="module")
def reference(model_dirs):
    return hf_lm(model_dirs["hf"], batch_size=8)


def _run_both(tasks, reference, lm, task_dir):
    specs = resolve_tasks(tasks)
    names = write_task_dir(task_dir, {s.name: s.resolve(s.data) for s in specs})
    theirs = run_lm_eval(reference, task_dir, names)
    ours = evaluate(lm, specs, EvalSettings(batch_size=8, log_samples=True, baselines=[]))
    return ours["tasks"], theirs


@pytest.fixture(scope="module")
def both(reference, lm, tmp_path_factory):
    return _run_both(FAST, reference, lm, tmp_path_factory.mktemp("lm_eval_tasks"))


def _check_multiple_choice(ours, theirs, task):
    samples = sorted(theirs["samples"][f"scratch_{task}"], key=lambda s: s["doc_id"])
    assert len(samples) == len(ours[task]["samples"]) == len(task_records(resolve_tasks([task])[0]))
    for mine, ref in zip(ours[task]["samples"], samples, strict=True):
        # the same requests ...
        assert [(mine["prompt"], " " + c) for c in mine["continuations"]] == [tuple(a) for a in ref["arguments"]]
        # ... the same log-likelihoods
        ref_lls = [r[0][0] for r in ref["resps"]]
        assert mine["loglikelihoods"] == pytest.approx(ref_lls, abs=2e-4)
    res = theirs["results"][f"scratch_{task}"]
    assert ours[task]["metrics"]["acc"] == pytest.approx(res["acc,none"], abs=1e-12)
    assert ours[task]["metrics"]["acc_norm"] == pytest.approx(res["acc_norm,none"], abs=1e-12)


@pytest.mark.parametrize("task", ["mmlu", "arc"])
def test_multiple_choice_matches_lm_eval(both, task):
    _check_multiple_choice(*both, task)


@pytest.mark.slow
def test_hellaswag_matches_lm_eval(reference, lm, tmp_path):
    _check_multiple_choice(*_run_both(["hellaswag"], reference, lm, tmp_path), "hellaswag")


def test_perplexity_matches_lm_eval(both):
    ours, theirs = both
    res = theirs["results"]["scratch_ppl"]
    m = ours["ppl"]["metrics"]
    assert ours["ppl"]["tokens"] > 3 * ours["ppl"]["max_length"]  # several windows per document
    for key in ("word_perplexity", "byte_perplexity", "bits_per_byte"):
        assert m[key] == pytest.approx(res[f"{key},none"], rel=1e-5), key
    samples = sorted(theirs["samples"]["scratch_ppl"], key=lambda s: s["doc_id"])
    for mine, ref in zip(ours["ppl"]["samples"], samples, strict=True):
        assert mine["logprob"] == pytest.approx(ref["resps"][0][0], abs=1e-3)
    assert math.isfinite(m["token_perplexity"])
