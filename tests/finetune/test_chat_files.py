from __future__ import annotations

import json

import pytest

from scratchllm.errors import ScratchError
from scratchllm.finetune.chat_files import load_chat_jsonl


def test_load_jsonl_formats_and_errors(tmp_path):
    lines = [
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}),
        json.dumps({"instruction": "Add", "input": "1 2", "output": "3"}),
        "{not json",
        json.dumps({"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]}),
        json.dumps({"messages": [{"role": "user", "content": "no reply"}]}),
        "",
        json.dumps({"prompt": "x"}),
    ]
    path = tmp_path / "chats.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ScratchError, match=r"chats.jsonl:3: malformed JSON"):
        load_chat_jsonl(path)
    reports: list[str] = []
    convs = load_chat_jsonl(path, skip_bad=True, report=reports.append)
    assert convs[0][1] == {"role": "assistant", "content": "hello"}
    assert convs[1] == [{"role": "user", "content": "Add\n\n1 2"}, {"role": "assistant", "content": "3"}]
    assert convs[2] == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert len(convs) == 3
    joined = "\n".join(reports)
    assert ":3: malformed JSON" in joined and ":5:" in joined and "no (non-empty) assistant turn" in joined
    assert ":7: unrecognised chat format" in joined and "skipped 3 bad line(s)" in joined
    bad_utf8 = tmp_path / "latin1.jsonl"
    bad_utf8.write_bytes(("\n".join([lines[0]] * 300) + "\n").encode() + '{"instruction": "caf\xe9", "output": "x"}\n'
                         .encode("latin-1") + (lines[1] + "\n").encode())
    with pytest.raises(ScratchError, match=r"latin1.jsonl:301: not valid UTF-8"):
        load_chat_jsonl(bad_utf8)
    assert len(load_chat_jsonl(bad_utf8, skip_bad=True, report=reports.append)) == 301
    with pytest.raises(ScratchError, match="not found"):
        load_chat_jsonl(tmp_path / "missing.jsonl")


def test_sharegpt_json_array_file(tmp_path):
    """ShareGPT as usually distributed: one JSON array in a .json file (issue #23, item 7)."""
    convs = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
             for i in range(3)]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(convs, indent=2))  # pretty-printed: no record on a line of its own
    got = load_chat_jsonl(path)
    assert got[2] == [{"role": "user", "content": "q2"}, {"role": "assistant", "content": "a2"}]
    convs[1] = {"conversations": [{"from": "human", "value": "no reply"}]}
    path.write_text(json.dumps(convs))
    with pytest.raises(ScratchError, match=r"sharegpt.json\[1\]: conversation has no"):
        load_chat_jsonl(path)
    reports: list[str] = []
    assert len(load_chat_jsonl(path, skip_bad=True, report=reports.append)) == 2
    path.write_text(json.dumps(convs)[:-5])
    with pytest.raises(ScratchError, match="malformed JSON array"):
        load_chat_jsonl(path)
