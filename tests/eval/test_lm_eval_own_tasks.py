"""Agreement with lm-evaluation-harness on its *own* task definitions (issue #23, item 5).

lm-eval's installed hellaswag, mmlu, arc_easy and gsm8k YAMLs (with their Python preprocessing) are
included unchanged; only the data source is pointed at local files this test writes in the original
public schemas: HellaSwag's JSONL with [header]/[title]/[step] markers and ctx_a/ctx_b, MMLU as the
Hugging Face Parquet copy (and, for our side, the original headerless per-subject CSV), ARC-Easy and
GSM8K as the Hugging Face JSONL. Our built-in task specs read the same files (``--data``) and must send
the same requests and get the same scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scratchllm.eval.reference import hf_lm
from scratchllm.eval.runner import EvalSettings, evaluate
from scratchllm.tasks.specs import resolve_tasks

lm_eval = pytest.importorskip("lm_eval")
pytest.importorskip("transformers")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

TASKS_DIR = Path(lm_eval.__file__).parent / "tasks"

HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering "
     "the window of a car, and a woman wearing winter clothes smiles.", "ctx_b": "then",
     "ctx": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter "
     "clothes smiles. then", "endings": [", the man adds wax to the windshield and cuts it.",
                                         ", a person boards a ski lift.",
                                         ", the man puts on a christmas coat, knitted with netting.",
                                         ", the man continues removing the snow on his car."],
     "source_id": "activitynet~v_-1IBHYS3L-Y", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 41, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes in pots [title] "
     "Choose a large container. [step] Tomatoes need room for their roots.", "ctx_b": "a five gallon bucket",
     "ctx": "[header] How to grow tomatoes in pots [title] Choose a large container. [step] Tomatoes need "
     "room for their roots. a five gallon bucket", "endings": [
         "works well for one plant. [substeps] Drill holes in the bottom for drainage.",
         "is too  small for anything [title] Paint it blue.",
         "should be filled with sand only. [step] Water it once a year.",
         "can hold twenty plants [title] Plant them close together."],
     "source_id": "wikihow~12345", "split": "val", "split_type": "zeroshot", "label": "0"},
    {"ind": 97, "activity_label": "Baking cookies", "ctx_a": "A woman mixes butter and sugar in a bowl.",
     "ctx_b": "she", "ctx": "A woman mixes butter and sugar in a bowl. she", "endings": [
         "adds eggs and flour and stirs.", "throws the bowl out of the window.",
         "paints the sugar green.", "reads the bowl a story."],
     "source_id": "activitynet~v_abc", "split": "val", "split_type": "indomain", "label": "0"},
]

MMLU = [  # the Hugging Face copy's schema: question, subject, choices, answer (an index)
    {"question": " What is the powerhouse of the cell?", "subject": "high_school_biology",
     "choices": ["Nucleus", "Mitochondrion", "Ribosome", "Golgi body"], "answer": 1},
    {"question": "Which molecule carries genetic information?", "subject": "high_school_biology",
     "choices": ["ATP", "Glucose", "DNA", "Cellulose"], "answer": 2},
    {"question": "Plants make sugar by which process?", "subject": "high_school_biology",
     "choices": ["Photosynthesis", "Fermentation", "Respiration", "Osmosis"], "answer": 0},
]

ARC = [
    {"id": "Mercury_1", "question": "Which of these is a renewable resource?",
     "choices": {"text": ["coal", "wind", "oil", "natural gas"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
    {"id": "Mercury_2", "question": "What do plants need to make food?",
     "choices": {"text": ["sunlight", "sand", "rocks"], "label": ["1", "2", "3"]}, "answerKey": "1"},
]

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 12 eggs. How many eggs are in 5 boxes?",
     "answer": "5 * 12 = <<5*12=60>>60 eggs.\n#### 60"},
]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _wrapper(task_dir: Path, name: str, include: Path, kind: str, files: dict[str, Path], **extra: str) -> str:
    """A YAML that includes lm-eval's own task file and only swaps the data source for local files."""
    lines = [f"include: {include}", f"task: {name}", f"dataset_path: {kind}", "dataset_name: null",
             "dataset_kwargs:", "  data_files:"]
    lines += [f"    {split}: {path}" for split, path in files.items()]
    lines += [f"  cache_dir: {task_dir / 'cache'}"]
    lines += [f"{k}: {v}" for k, v in extra.items()]
    (task_dir / f"{name}.yaml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return name


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("original_formats")
    out = {"hellaswag": _jsonl(root / "hellaswag_val.jsonl", HELLASWAG),
           "arc_easy": _jsonl(root / "ARC-Easy-Test.jsonl", ARC),
           "gsm8k": _jsonl(root / "test.jsonl", GSM8K)}
    out["mmlu"] = root / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(MMLU), out["mmlu"])
    # The original release: one headerless CSV per subject, answer as a letter.
    csv = root / "high_school_biology_test.csv"
    import csv as csv_module

    with csv.open("w", newline="", encoding="utf-8") as f:
        w = csv_module.writer(f)
        for r in MMLU:
            w.writerow([r["question"], *r["choices"], "ABCD"[r["answer"]]])
    out["mmlu_csv"] = csv
    return out


@pytest.fixture(scope="module")
def theirs(model_dirs, files, tmp_path_factory):
    from lm_eval.tasks import TaskManager

    task_dir = tmp_path_factory.mktemp("lm_eval_own")
    names = [
        _wrapper(task_dir, "own_hellaswag", TASKS_DIR / "hellaswag" / "hellaswag.yaml", "json",
                 {"validation": files["hellaswag"]}, training_split="null"),
        _wrapper(task_dir, "own_mmlu", TASKS_DIR / "mmlu" / "default" / "mmlu_high_school_biology.yaml", "parquet",
                 {"test": files["mmlu"], "dev": files["mmlu"]}),
        _wrapper(task_dir, "own_arc_easy", TASKS_DIR / "arc" / "arc_easy.yaml", "json",
                 {"test": files["arc_easy"]}, training_split="null", validation_split="null"),
        _wrapper(task_dir, "own_gsm8k", TASKS_DIR / "gsm8k" / "gsm8k.yaml", "json",
                 {"test": files["gsm8k"], "train": files["gsm8k"]}),
    ]
    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    # gsm8k at 0 shots (lm-eval samples its shots at random) and few generated tokens: the requests and
    # the answer extraction are what is compared; the tiny random model solves nothing either way.
    return lm_eval.simple_evaluate(model=hf_lm(model_dirs["hf"], batch_size=8), tasks=names, task_manager=manager,
                                   log_samples=True, bootstrap_iters=0, num_fewshot=0,
                                   gen_kwargs="max_gen_toks=8")


def _ours(lm, task: str, data: Path, **spec_changes):
    spec = resolve_tasks([task], {task: str(data)})[0]
    for k, v in spec_changes.items():
        setattr(spec, k, v)
    return evaluate(lm, [spec], EvalSettings(batch_size=8, log_samples=True, baselines=[], max_tokens=8))["tasks"][task]


def _same_multiple_choice(ours, theirs, name):
    ref = sorted(theirs["samples"][name], key=lambda s: s["doc_id"])
    assert len(ref) == len(ours["samples"])
    for mine, r in zip(ours["samples"], ref, strict=True):
        assert [(mine["prompt"], " " + c) for c in mine["continuations"]] == [tuple(a) for a in r["arguments"]]
        assert mine["loglikelihoods"] == pytest.approx([x[0][0] for x in r["resps"]], abs=2e-4)
    res = theirs["results"][name]
    metrics = [m for m in ("acc", "acc_norm") if f"{m},none" in res]  # lm-eval's mmlu reports acc only
    assert "acc" in metrics
    for m in metrics:
        assert ours["metrics"][m] == pytest.approx(res[f"{m},none"], abs=1e-12)


def test_hellaswag_original_file(lm, files, theirs):
    ours = _ours(lm, "hellaswag", files["hellaswag"])
    _same_multiple_choice(ours, theirs, "own_hellaswag")
    prompt = ours["samples"][1]["prompt"]
    assert "[" not in prompt and "A five gallon bucket" in prompt  # markers out, ctx_b capitalised
    assert ours["samples"][0]["prompt"].endswith("smiles. Then")


@pytest.mark.parametrize("which", ["mmlu", "mmlu_csv"])
def test_mmlu_parquet_and_original_csv(lm, files, theirs, which):
    ours = _ours(lm, "mmlu", files[which])
    _same_multiple_choice(ours, theirs, "own_mmlu")
    assert ours["samples"][0]["prompt"].startswith(
        "The following are multiple choice questions (with answers) about high school biology.\n\n"
        "What is the powerhouse")


def test_arc_easy(lm, files, theirs):
    _same_multiple_choice(_ours(lm, "arc", files["arc_easy"]), theirs, "own_arc_easy")


def test_gsm8k_requests_and_answer_extraction(lm, files, theirs):
    ref = sorted((s for s in theirs["samples"]["own_gsm8k"] if s["filter"] == "strict-match"),
                 key=lambda s: s["doc_id"])
    assert len(ref) == len(GSM8K)
    # Their stop sequences, zero shots: the same request as lm-eval's own gsm8k.
    ours = _ours(lm, "gsm8k", files["gsm8k"], num_fewshot=0, stop=["Question:", "</s>", "<|im_end|>"])
    for mine, r in zip(ours["samples"], ref, strict=True):
        context, gen_kwargs = r["arguments"][0]
        assert mine["prompt"] == context
        assert gen_kwargs["until"] == ["Question:", "</s>", "<|im_end|>"]
    # Our extraction on lm-eval's own outputs gives lm-eval's filtered answers.
    from scratchllm.eval import metrics as M

    by_filter = {}
    for r in theirs["samples"]["own_gsm8k"]:
        by_filter.setdefault(r["filter"], []).append(r)
    for r in by_filter["strict-match"]:
        out = r["resps"][0][0]
        assert (M.extract_strict(out, r"#### (\-?[0-9\.\,]+)") or "[invalid]") == r["filtered_resps"][0]
    assert set(by_filter) == {"strict-match", "flexible-extract"}
    res = theirs["results"]["own_gsm8k"]
    assert ours["metrics"]["exact_match"] == pytest.approx(res["exact_match,strict-match"], abs=1e-12)
