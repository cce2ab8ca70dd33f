"""Task specs and data files: the embedded sets, real-format compatibility, and clear errors."""

from __future__ import annotations

import gzip
import json

import pytest

from scratchllm.errors import ScratchError
from scratchllm.eval.metrics import extract_strict
from scratchllm.tasks.specs import (
    GROUPS,
    builtin_tasks,
    choice_texts,
    get_path,
    gold_index,
    load_spec,
    read_records,
    render,
    resolve_tasks,
    task_records,
)


def test_every_builtin_task_loads_and_is_well_formed():
    tasks = builtin_tasks()
    assert {"ppl", "mmlu", "hellaswag", "arc", "gsm8k", "humaneval", "safety", "judge"} <= set(tasks)
    for name in tasks:
        (spec,) = resolve_tasks([name])
        records = task_records(spec)
        assert len(records) >= 8, name
        for rec in records:
            if spec.type != "perplexity":
                assert render(spec.template, rec)
            if spec.type == "multiple_choice":
                choices = choice_texts(spec, rec)
                assert 0 <= gold_index(spec, rec, len(choices), choices) < len(choices)
            if spec.type == "generate":
                assert extract_strict(get_path(rec, spec.answer), spec.answer_pattern) is not None
            if spec.type == "safety":
                assert isinstance(get_path(rec, spec.harmful), bool)


def test_safety_suite_covers_categories_and_benign_controls():
    (spec,) = resolve_tasks(["safety"])
    records = task_records(spec)
    harmful = {r.data["category"] for r in records if r.data["harmful"]}
    assert {"violence", "self_harm", "malware", "privacy", "hate"} <= harmful
    assert sum(not r.data["harmful"] for r in records) >= 10


def test_mc_answers_are_not_all_in_one_position():
    for name in GROUPS["mc"]:
        (spec,) = resolve_tasks([name])
        golds = []
        for rec in task_records(spec):
            choices = choice_texts(spec, rec)
            golds.append(gold_index(spec, rec, len(choices), choices))
        assert len(set(golds)) >= 3, name


def test_groups_and_unknown_names():
    assert [s.name for s in resolve_tasks(["mc"])] == ["mmlu", "hellaswag", "arc"]
    assert [s.name for s in resolve_tasks(["mmlu", "mc"])] == ["mmlu", "hellaswag", "arc"]  # no duplicates
    with pytest.raises(ScratchError, match="unknown task 'mmlu_pro'") as e:
        resolve_tasks(["mmlu_pro"])
    assert "gsm8k" in e.value.hint


def test_data_override_reads_a_real_format_file(tmp_path):
    # the original HumanEval ships as .jsonl.gz with these fields
    row = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
           "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    path = tmp_path / "HumanEval.jsonl.gz"
    path.write_bytes(gzip.compress((json.dumps(row) + "\n").encode()))
    (spec,) = resolve_tasks(["humaneval"], {"humaneval": str(path)})
    assert task_records(spec)[0].data == row
    with pytest.raises(ScratchError, match="not among the tasks"):
        resolve_tasks(["mmlu"], {"humaneval": str(path)})


def test_original_arc_layout_via_field_paths(tmp_path):
    row = {"id": "x", "question": {"stem": "Which is a metal?", "choices": [
        {"text": "wood", "label": "A"}, {"text": "iron", "label": "B"}, {"text": "glass", "label": "C"}]},
        "answerKey": "B"}
    (tmp_path / "arc.jsonl").write_text(json.dumps(row) + "\n")
    (tmp_path / "arc.toml").write_text(
        'name = "arc_orig"\ntype = "multiple_choice"\ndata = "arc.jsonl"\n'
        'template = "Question: {question[stem]}\\nAnswer:"\nchoices = "question.choices.text"\n'
        'answer = "answerKey"\nanswer_labels = "question.choices.label"\n')
    (spec,) = resolve_tasks([str(tmp_path / "arc.toml")])
    (rec,) = task_records(spec)
    assert render(spec.template, rec) == "Question: Which is a metal?\nAnswer:"
    assert choice_texts(spec, rec) == ["wood", "iron", "glass"]
    assert gold_index(spec, rec, 3, ["wood", "iron", "glass"]) == 1


def test_csv_and_text_files(tmp_path):
    (tmp_path / "q.csv").write_text('question,A,B,answer\n"What is 1+1, in words?",two,three,A\n')
    (rec,) = read_records(tmp_path / "q.csv")
    assert rec.data["question"] == "What is 1+1, in words?" and rec.source.endswith("q.csv:2")
    (tmp_path / "t.txt").write_text("Some held-out text.\n")
    assert read_records(tmp_path / "t.txt")[0].data == {"text": "Some held-out text.\n"}


@pytest.mark.parametrize(("content", "message"), [
    ('{"question": "a"}\n{"question": \n', r"data.jsonl:2: malformed JSON"),
    ('{"question": "a"}\n\n[1, 2]\n', r"data.jsonl:3: expected a JSON object"),
    ("", "holds no records"),
    (b"\xff\xfe{}", "data.jsonl:1: not valid UTF-8"),
])
def test_malformed_data_files_name_the_line(tmp_path, content, message):
    path = tmp_path / "data.jsonl"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ScratchError, match=message):
        read_records(path)


def _spec(tmp_path, text: str, data: str = '{"question": "q", "choices": ["a", "b"], "answer": "Z"}\n'):
    (tmp_path / "data.jsonl").write_text(data)
    path = tmp_path / "task.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("spec_text", "message"), [
    ('name = "t"\ntype = "multiple_choice"\ndata = "data.jsonl"\ntemplate = "{question"\n', "bad template"),
    ('name = "t"\ntype = "multiple_choice"\ndata = "data.jsonl"\ntemplate = "{question.__class__}"\n', "not allowed"),
    ('name = "t"\ntype = "multiple_choice"\ndata = "data.jsonl"\nchoises = "x"\n', "unknown config key 'choises'"),
    ('name = "t"\ntype = "quiz"\ndata = "data.jsonl"\n', "type' must be one of"),
    ('name = "t"\ntype = "multiple_choice"\n', "missing"),
    ('name = "t"\ntype = "multiple_choice"\ndata = "data.jsonl"\nmax_tokens = "many"\n', "must be an integer"),
    ('name = "t"\ntype = [multiple\n', "not valid TOML"),
])
def test_malformed_specs_are_explained(tmp_path, spec_text, message):
    path = _spec(tmp_path, spec_text)
    with pytest.raises(ScratchError, match=message) as e:
        load_spec(path)
    assert str(path) in str(e.value)


def test_record_errors_name_file_and_line(tmp_path):
    data = '{"question": "q", "choices": ["a", "b"], "answer": "A"}\n{"question": "q", "choices": ["a", "b"], "answer": "Z"}\n'
    spec = load_spec(_spec(tmp_path, 'name = "t"\ntype = "multiple_choice"\ndata = "data.jsonl"\n', data))
    records = task_records(spec)
    assert gold_index(spec, records[0], 2, ["a", "b"]) == 0
    with pytest.raises(ScratchError, match=r"data.jsonl:2: answer 'Z' does not name one of the 2 choices"):
        gold_index(spec, records[1], 2, ["a", "b"])
    with pytest.raises(ScratchError, match=r"data.jsonl:1: the template needs 'nope'"):
        render("{nope}", records[0])
    with pytest.raises(ScratchError, match=r"data.jsonl:1: missing field 'choices.text'"):
        get_path(records[0], "choices.text")
