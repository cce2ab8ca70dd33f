from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from scratchllm.config import from_dict, load_config, parse_override, to_toml
from scratchllm.errors import ScratchError


@dataclass
class Opt:
    lr: float = 1e-3
    steps: int = 10
    schedule: Literal["cosine", "wsd"] = "cosine"


@dataclass
class Root:
    name: str = "run"
    out: Path = Path("runs/x")
    tags: list[str] = field(default_factory=list)
    weights: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    train: Opt = field(default_factory=Opt)


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.toml"
    p.write_text(text)
    return p


def test_toml_and_overrides(tmp_path):
    p = write(tmp_path, 'name = "a"\n[train]\nlr = 0.1\n[weights]\nprose = 0.7\ncode = 0.3\n')
    cfg = load_config(Root, p, ["train.lr=3e-4", "train.steps=5", "train.schedule=wsd", "tags=[\"x\", \"y\"]", "seed=7"])
    assert cfg.name == "a" and cfg.train.lr == 3e-4 and cfg.train.steps == 5
    assert cfg.train.schedule == "wsd" and cfg.tags == ["x", "y"] and cfg.seed == 7
    assert cfg.weights == {"prose": 0.7, "code": 0.3}
    assert isinstance(cfg.out, Path)


def test_int_promotes_to_float_but_not_reverse():
    assert from_dict(Opt, {"lr": 1}).lr == 1.0
    with pytest.raises(ScratchError, match="'steps' must be an integer"):
        from_dict(Opt, {"steps": 1.5})


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.steps=abc", "'train.steps' must be an integer"),
        ("train.schedule=linear", "'train.schedule' must be one of"),
        ("tags=3", "'tags' must be a list"),
        ("train=3", "'train' must be a table"),
        ("novalue", "expected key=value"),
    ],
)
def test_errors_name_the_key(override, match):
    with pytest.raises(ScratchError, match=match):
        load_config(Root, None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(ScratchError, match="config file not found"):
        load_config(Root, tmp_path / "missing.toml")
    with pytest.raises(ScratchError, match="not valid TOML"):
        load_config(Root, write(tmp_path, "name = = 3"))


def test_override_parsing():
    assert parse_override("a.b=3e-4") == ("a.b", 3e-4)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=gpt4") == ("a", "gpt4")
    assert parse_override("a=x=y") == ("a", "x=y")


def test_toml_round_trip(tmp_path):
    cfg = Root(name='q"uote', tags=["a"], weights={"p": 0.5}, seed=3, train=Opt(lr=0.5, steps=2))
    again = load_config(Root, write(tmp_path, to_toml(cfg)))
    assert again == cfg


# Presets: found relative to the file naming them, or by name from anywhere (issue #23, item 1).

def test_nested_preset_resolves_relative_to_the_file_naming_it(tmp_path, monkeypatch):
    from scratchllm.train.config import TrainConfig

    (tmp_path / "presets" / "model").mkdir(parents=True)
    (tmp_path / "presets" / "model" / "small.toml").write_text(
        "d_model = 32\nn_layers = 1\nn_heads = 2\nn_kv_heads = 2\nd_ff = 64\nvocab_size = 300\ncontext_length = 32\n")
    (tmp_path / "presets" / "train.toml").write_text('[model]\npreset = "model/small.toml"\n[data]\nseq_len = 16\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(TrainConfig, tmp_path / "presets" / "train.toml")
    assert cfg.model.d_model == 32 and cfg.model.vocab_size == 300


def test_missing_nested_preset_names_the_file_that_pointed_there(tmp_path, monkeypatch):
    from scratchllm.train.config import TrainConfig

    naming = tmp_path / "train.toml"
    naming.write_text('[model]\npreset = "nowhere/big.toml"\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScratchError) as e:
        load_config(TrainConfig, naming)
    assert "config file not found: nowhere/big.toml" in e.value.message
    assert str(naming) in e.value.message and "'model.preset'" in e.value.message


@pytest.mark.parametrize("name", ["cpu-demo", "pipeline/cpu-demo", "configs/pipeline/cpu-demo.toml"])
def test_shipped_pipeline_preset_by_name_from_another_directory(tmp_path, monkeypatch, name):
    from scratchllm.pipeline.config import PipelineConfig

    monkeypatch.chdir(tmp_path)
    # validate() resolves every stage table, with their nested presets (train -> model/1m.toml).
    cfg = load_config(PipelineConfig, name, ["pretrain.train.max_steps=3"])
    assert cfg.train_config().train.max_steps == 3
    assert cfg.train_config().model.d_model == 128  # from configs/model/1m.toml via configs/train/cpu-tiny.toml


def test_ambiguous_or_unknown_preset_name(tmp_path, monkeypatch):
    from scratchllm.config import find_config

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ScratchError, match="ambiguous.*data/default.*tokenizer/default"):
        find_config("default")
    with pytest.raises(ScratchError, match="config file not found: no-such-preset") as e:
        find_config("no-such-preset")
    assert "pipeline/cpu-demo" in e.value.hint


def test_preset_override_on_the_command_line_is_relative_to_the_working_directory(tmp_path, monkeypatch):
    from scratchllm.train.config import TrainConfig

    (tmp_path / "m.toml").write_text(
        "d_model = 16\nn_layers = 1\nn_heads = 2\nn_kv_heads = 2\nd_ff = 32\nvocab_size = 300\ncontext_length = 128\n")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(TrainConfig, "train/cpu-tiny", ["model.preset=m.toml"])
    assert cfg.model.d_model == 16


def test_shipped_preset_runs_from_a_temporary_working_directory(tmp_path):
    """`scratchllm tokenizer train` with no --config (the shipped default preset), run from elsewhere."""
    import os
    import subprocess
    import sys

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src)}
    r = subprocess.run(
        [sys.executable, "-m", "scratchllm", "tokenizer", "train", "corpus.max_bytes_per_domain=20000",
         "tokenizer.vocab_size=300", "out_dir=tok"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tok" / "tokenizer.json").is_file()


def test_help_example_override_is_valid_for_every_command():
    """Each config-driven command shows an override in --help that its own default preset accepts."""
    import argparse

    from scratchllm.align.compare import CompareConfig
    from scratchllm.align.config import ConstitutionalConfig, DPOConfig, GRPOConfig, PPOConfig, RewardConfig, RLOOConfig
    from scratchllm.cli import build_parser
    from scratchllm.data.config import DataConfig
    from scratchllm.eval.config import EvalConfig
    from scratchllm.finetune.config import FinetuneConfig
    from scratchllm.infer.config import ChatConfig, GenerateConfig, QuantizeConfig
    from scratchllm.inspect.config import AttentionConfig, EmbeddingsConfig, MemoryConfig, TokensConfig
    from scratchllm.model.config import ExportHFConfig, ImportHFConfig
    from scratchllm.model.model import ModelConfig
    from scratchllm.pipeline.config import PipelineConfig
    from scratchllm.serve.config import ServeConfig
    from scratchllm.tokenizer.config import TokenizerTrainConfig
    from scratchllm.train.config import TrainConfig

    classes = {"tokenizer train": TokenizerTrainConfig, "model info": ModelConfig, "model init": ModelConfig,
               "data prepare": DataConfig, "train": TrainConfig, "finetune": FinetuneConfig,
               "align dpo": DPOConfig, "align reward": RewardConfig, "align ppo": PPOConfig,
               "align grpo": GRPOConfig, "align rloo": RLOOConfig,
               "align constitutional": ConstitutionalConfig, "align compare": CompareConfig, "serve": ServeConfig,
               "pipeline": PipelineConfig, "eval": EvalConfig, "generate": GenerateConfig, "chat": ChatConfig,
               "quantize": QuantizeConfig, "export hf": ExportHFConfig, "import hf": ImportHFConfig, "inspect tokens": TokensConfig,
               "inspect embeddings": EmbeddingsConfig, "inspect attention": AttentionConfig,
               "inspect memory": MemoryConfig}
    seen = {}

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}".strip())
        if parser.get_default("config_example"):
            seen[prefix] = (parser.get_default("config"), parser.get_default("config_example"))
            assert parser.get_default("config_example") in parser.format_help()

    walk(build_parser(), "")
    assert set(seen) == set(classes)
    for command, (default, example) in seen.items():
        load_config(classes[command], default, [example])  # raises on an unknown key


def test_to_toml_writes_lists_of_tables_back_readably():
    import tomllib

    @dataclass
    class WithSources:
        sources: list[dict[str, str | list[str]]] = field(default_factory=list)

    obj = WithSources(sources=[{"kind": "files", "paths": ["a b/", 'q"uote']}, {"kind": "embedded", "odd key": "x"}])
    assert tomllib.loads(to_toml(obj)) == {"sources": obj.sources}


def test_alias_flags_become_overrides_that_parse_back_to_their_values():
    """A flag kept as an alias (cli.add_alias) is written as key=<TOML literal>: any value survives the trip."""
    import argparse

    from scratchllm.cli import add_alias, config_overrides, toml_literal

    for value in ['a "quoted" \\ back\nslash', "héllo 😀", "", 1e-5, float("inf"), -3, True, False,
                  ["x", "y=1"], [1, 10], {"gsm8k": "~/d.jsonl", "odd key": "v"}]:
        assert parse_override("k=" + toml_literal(value)) == ("k", value)
    p = argparse.ArgumentParser()
    p.add_argument("overrides", nargs="*")
    add_alias(p, "--out", key="out_dir")
    add_alias(p, "--stop", key="stop", action="append")
    add_alias(p, "--chat", key="chat", action="store_true")
    args = p.parse_args(["limit=2", "--out", "runs/a b", "--stop", "\n", "--stop", "END", "--chat"])
    assert config_overrides(args) == ["limit=2", 'out_dir="runs/a b"', 'stop=["\\n", "END"]', "chat=true"]
    assert config_overrides(p.parse_args(["limit=2"])) == ["limit=2"]  # flags not given add nothing
