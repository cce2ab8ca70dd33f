"""Task runners end to end (with scripted models where the outcome must be known), reports, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from scratchllm.cli import main
from scratchllm.eval.report import to_html, write_results
from scratchllm.eval.runner import EvalSettings, evaluate
from scratchllm.eval.safety import classify_refusal
from scratchllm.tasks.specs import get_path, resolve_tasks, task_records


def _gsm8k_answers():
    (spec,) = resolve_tasks(["gsm8k"])
    return {get_path(r, "question"): get_path(r, "answer") for r in task_records(spec)}


def test_gsm8k_exact_match_with_a_model_that_knows_half_the_answers(scripted):
    answers = _gsm8k_answers()
    questions = list(answers)

    def reply(prompt, i):
        q = prompt.rsplit("Question: ", 1)[1].split("\nAnswer:")[0]
        k = questions.index(q)
        final = answers[q].rsplit("#### ", 1)[1]
        if k % 2:
            return " I think it is 3 or so.\n#### 9999"
        return f" Working it out, the result is {final}.\n#### {final}" if k % 4 == 0 else f" So the answer is {final}."

    lm = scripted(reply)
    res = evaluate(lm, resolve_tasks(["gsm8k"]), EvalSettings(log_samples=True))["tasks"]["gsm8k"]
    n = len(questions)
    assert res["n"] == n
    assert res["metrics"]["exact_match"] == pytest.approx(sum(k % 4 == 0 for k in range(n)) / n)
    assert res["metrics"]["exact_match_flexible"] == pytest.approx(sum(k % 2 == 0 for k in range(n)) / n)
    # 3-shot prompt from the separate few-shot file, lm-eval's gsm8k layout
    assert lm.prompts[0].count("Question: ") == 4 and lm.prompts[0].count("#### ") == 3


def test_humaneval_pass_at_k_with_sampled_completions(scripted):
    (spec,) = resolve_tasks(["humaneval"])
    solutions = {get_path(r, "prompt"): get_path(r, "canonical_solution") for r in task_records(spec)}

    def reply(prompt, i):  # sample i is right for i < 2 only; sample 2 loops forever
        return solutions[prompt] if i < 2 else ("    while True:\n        pass\n" if i == 2 else "    return None\n")

    spec.timeout = 2.0
    res = evaluate(scripted(reply), [spec], EvalSettings(limit=3, samples=4, temperature=0.8, k=[1, 2, 4]))
    m = res["tasks"]["humaneval"]["metrics"]
    assert m["pass@1"] == pytest.approx(0.5)
    assert m["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert m["pass@4"] == 1.0
    assert res["tasks"]["humaneval"]["statuses"] == {"passed": 6, "timeout": 3, "failed": 3}


def test_safety_report_by_category(scripted):
    refuse = "I'm sorry, but I can't help with that."

    def reply(prompt, i):
        return refuse if ("bomb" in prompt or "kill" in prompt) else "Sure, here is how."

    res = evaluate(scripted(reply), resolve_tasks(["safety"]), EvalSettings())["tasks"]["safety"]
    cats = res["categories"]
    assert cats["weapons"]["refusal"] >= 1 and cats["benign"]["harmful"] is False
    assert res["metrics"]["over_refusal_rate"] == pytest.approx(1 / cats["benign"]["n"])  # "kill a Python process"
    assert 0 < res["metrics"]["safe_rate"] < 1
    assert res["metrics"]["n_harmful"] + res["metrics"]["n_benign"] == res["n"]


def test_chat_and_max_tokens_settings_reach_generative_tasks(scripted):
    lm = scripted(lambda p, i: "I can't help with that. #### 1")
    evaluate(lm, resolve_tasks(["safety", "gsm8k"]), EvalSettings(limit=4, chat=True))
    assert len(lm.prompts) == 4 + 4 and all(p.startswith("<chat>") for p in lm.prompts)
    assert set(lm.max_tokens) == {96, 256}  # each spec's generation length
    lm.prompts.clear()
    lm.max_tokens.clear()
    evaluate(lm, resolve_tasks(["safety"]), EvalSettings(limit=2, max_tokens=7))
    assert not any(p.startswith("<chat>") for p in lm.prompts) and lm.max_tokens == [7, 7]


@pytest.mark.parametrize(("text", "label"), [
    ("I'm sorry, but I can't help with that request.", "refusal"),
    ("I cannot provide instructions for that.", "refusal"),
    ("I won\u2019t do that.", "refusal"),
    ("That would violate my guidelines, so I will not.", "refusal"),
    ("Sure! Step 1: gather the materials.", "compliance"),
    ("Here is a short story about a detective.", "compliance"),
    ("   ", "empty"),
])
def test_refusal_classifier(text, label):
    assert classify_refusal(text) == label


def test_judge_task_needs_an_endpoint(scripted):
    from scratchllm.errors import ScratchError

    with pytest.raises(ScratchError, match="needs a judge endpoint"):
        evaluate(scripted(lambda p, i: "x"), resolve_tasks(["judge"]), EvalSettings())


def test_judge_task_with_a_fake_endpoint(scripted, monkeypatch):
    class FakeClient:
        def __init__(self):
            self.calls = 0

        def chat(self, messages, **kw):
            self.calls += 1
            text = messages[-1]["content"]
            if "[The Start of Assistant B's Answer]" in text:
                a = text.split("[The Start of Assistant A's Answer]")[1]
                return "[[A]]" if a.lstrip().startswith("good") else "[[B]]"
            return "Rating: [[9]]" if "good" in text else "Rating: [[2]]"

    judge = FakeClient()
    settings = EvalSettings(judge=judge, compare=scripted(lambda p, i: "meh"), limit=4)
    res = evaluate(scripted(lambda p, i: "good answer"), resolve_tasks(["judge"]), settings)["tasks"]["judge"]
    assert res["metrics"]["score"] == 9.0
    assert res["metrics"]["pairwise_win_rate"] == 1.0 and res["metrics"]["pairwise_consistency"] == 1.0
    assert judge.calls == 4 * 3  # one grade + two pairwise (swapped) calls per question


def test_results_are_written_atomically_as_json_markdown_html(tmp_path, lm):
    settings = EvalSettings(limit=4, log_samples=True, baselines=["unigram", "kneser_ney"],
                            baseline_documents=lambda: ["Some training text for the baselines."] * 20)
    results = evaluate(lm, resolve_tasks(["ppl", "mmlu"]), settings)
    results["model"] = {"name": "tiny <model>", "path": "/x", "backend": "scratchllm"}
    (tmp_path / "results.json").write_text("old")
    written = write_results(results, tmp_path)
    assert {p.name for p in written} == {"results.json", "results.md", "results.html", "samples_ppl.jsonl",
                                         "samples_mmlu.jsonl"}
    data = json.loads((tmp_path / "results.json").read_text())
    assert "samples" not in data["tasks"]["mmlu"] and data["tasks"]["mmlu"]["data"] == "embedded:mmlu/data.jsonl"
    assert set(data["tasks"]["ppl"]["baselines"]) >= {"unigram", "kneser_ney_3"}
    md = (tmp_path / "results.md").read_text()
    assert "| ppl | bits_per_byte |" in md and "kneser_ney_3" in md
    assert "tiny &lt;model&gt;" in to_html(results)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_cli_end_to_end_on_our_model_directory(tmp_path, model_dirs, capsys):
    out = tmp_path / "out"
    code = main(["eval", "--tasks", "ppl,mc,gsm8k,humaneval,safety", "--model", str(model_dirs["ours"]),
                 "--limit", "2", "--out", str(out), "--baseline-text", str(model_dirs["ours"] / "config.json"),
                 "--log-samples", "--max-tokens", "12"])
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    assert list(data["tasks"]) == ["ppl", "mmlu", "hellaswag", "arc", "gsm8k", "humaneval", "safety"]
    assert data["model"]["backend"] == "scratchllm" and data["model"]["max_length"] == 64
    assert (out / "results.html").is_file() and (out / "samples_humaneval.jsonl").is_file()
    assert re.search(r"mmlu  acc  \d\.\d{4}", capsys.readouterr().out)


def test_cli_on_hf_directory(tmp_path, model_dirs):
    pytest.importorskip("transformers")
    assert main(["eval", "--tasks", "arc", "--model", str(model_dirs["hf"]), "--limit", "2",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["model"]["backend"] == "transformers"


@pytest.mark.parametrize(("args", "message"), [
    (["--tasks", "mmlu,nope", "--model", "{ours}"], "unknown task 'nope'"),
    (["--tasks", "mmlu", "--model", "{tmp}"], "holds no model"),
    (["--tasks", "mmlu", "--model", "{tmp}/missing"], "model directory not found"),
    (["--tasks", "judge", "--model", "{ours}"], "need --judge-url"),
    (["--tasks", "mmlu", "--model", "{ours}", "--data", "mmlu"], "expected TASK=PATH"),
    (["--tasks", "mmlu", "--model", "{ours}", "--data", "mmlu={tmp}/none.jsonl"], "task data file not found"),
    (["--tasks", "mmlu", "--model", "{ours}", "--limit", "0"], "--limit must be at least 1"),
    (["--tasks", "mmlu"], "--tasks and --model are required"),
    (["--tasks", "safety,mmlu", "--model", "http://127.0.0.1:9/v1"], "mmlu cannot run on an endpoint model"),
])
def test_cli_errors_are_clear(tmp_path, model_dirs, capsys, args, message):
    args = [a.format(ours=model_dirs["ours"], tmp=tmp_path) for a in args]
    assert main(["eval", *args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_cli_lists_tasks(capsys):
    assert main(["eval", "--list-tasks"]) == 0
    out = capsys.readouterr().out
    assert "humaneval" in out and "groups: mc = mmlu,hellaswag,arc" in out


def test_baselines_fit_on_a_prepared_data_folder(tmp_path, model_dirs, lm):
    """--baseline-text DATA_DIR: the n-gram baselines see your corpus (its train split), not the embedded one."""
    from scratchllm.corpus.shards import iter_documents
    from scratchllm.eval.run import baseline_loader

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    assert main(["data", "prepare", "--config", str(root / "configs/data/tiny.toml"), "--no-progress",
                 f"out_dir={data}", f"tokenizer={model_dirs['ours']}",
                 'sources=[{kind="synthetic", generators=["arithmetic"], count=40, domain="synthetic"}]',
                 "mix.weights={synthetic=1.0}"]) == 0
    texts = baseline_loader([str(data)], lm)()
    assert len(texts) == sum(1 for _ in iter_documents(data, "train")) > 0
    assert all(any(ch.isdigit() for ch in t) for t in texts)  # arithmetic problems, not the embedded prose


def test_cli_takes_a_config_file_overrides_and_the_old_flags(tmp_path, model_dirs, capsys):
    """--config FILE + key=value runs what the flags run; the flags are aliases of EvalConfig's keys."""
    cfg = tmp_path / "eval.toml"
    cfg.write_text(f'tasks = ["mmlu", "arc"]\nmodel = "{model_dirs["ours"]}"\nlimit = 50\nbaselines = []\n')
    assert main(["eval", "--config", str(cfg), "limit=2", f"out_dir={tmp_path / 'a'}", "--no-progress"]) == 0
    assert main(["eval", "--tasks", "mmlu,arc", "--model", str(model_dirs["ours"]), "--limit", "2",
                 "--baselines", "none", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("a", "b"))
    assert a["tasks"] == b["tasks"] and a["tasks"]["mmlu"]["n"] == 2 and a["settings"] == b["settings"]
    # a flag wins over the same key=value; the output of the command is unchanged
    assert main(["eval", "--config", str(cfg), "--limit", "3", "limit=2", f"out_dir={tmp_path / 'c'}"]) == 0
    assert json.loads((tmp_path / "c" / "results.json").read_text())["tasks"]["mmlu"]["n"] == 3
    assert re.search(r"mmlu  acc  \d\.\d{4}", capsys.readouterr().out)
    assert main(["eval", "--config", str(cfg), "limt=2"]) == 2
    assert "unknown config key 'limt'" in capsys.readouterr().err


def test_shipped_preset_held_out_data_and_generations(tmp_path, model_dirs, capsys):
    """--config eval/quick from any folder; heldout_data scores a prepared folder's val split; generations."""
    from scratchllm.corpus.shards import iter_documents

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    assert main(["data", "prepare", "--config", str(root / "configs/data/tiny.toml"), "--no-progress",
                 f"out_dir={data}", f"tokenizer={model_dirs['ours']}", "val_fraction=0.2",
                 'sources=[{kind="synthetic", generators=["arithmetic"], count=40, domain="synthetic"}]',
                 "mix.weights={synthetic=1.0}"]) == 0
    out = tmp_path / "out"
    assert main(["eval", "--config", "eval/quick", f"model={model_dirs['ours']}", "limit=2", "baselines=[]",
                 f"heldout_data={data}", "heldout_documents=1", f"out_dir={out}",
                 'generations.prompts=["The ", "def "]', "generations.max_tokens=4"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert list(res["tasks"]) == ["heldout", "ppl", "mmlu", "hellaswag", "arc"]
    val = sum(1 for _, ids in iter_documents(data, "val") if len(ids))
    assert res["tasks"]["heldout"]["n"] == 1 < val  # heldout_documents, of the val split
    gens = json.loads((out / "generations.json").read_text())
    assert [g["prompt"] for g in gens] == ["The ", "def "] and all(g["format"] == "text" for g in gens)
