"""Pipeline config: presets resolve, stage tables are checked strictly, every path goes into run_dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from scratchllm.config import load_config
from scratchllm.errors import ScratchError
from scratchllm.pipeline.config import STAGE_NAMES, PipelineConfig, stage_tables
from scratchllm.pipeline.stages import all_stages

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "configs" / "pipeline").glob("*.toml"))


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # presets name other presets relative to the repository root


def test_presets_exist():
    assert {p.stem for p in PRESETS} >= {"micro", "cpu-demo", "gpu-125m"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_resolves_with_paths_in_run_dir(preset, tmp_path):
    cfg = load_config(PipelineConfig, preset, [f"run_dir={tmp_path}"])
    tables = stage_tables(cfg)
    assert set(tables) == set(STAGE_NAMES)
    assert tables["tokenizer"]["out_dir"] == str(tmp_path / "tokenizer")
    assert tables["data"]["out_dir"] == str(tmp_path / "data")
    assert tables["data"]["tokenizer"] == str(tmp_path / "tokenizer")
    assert tables["pretrain"]["out_dir"] == str(tmp_path / "pretrain")
    assert tables["pretrain"]["data"]["path"] == str(tmp_path / "data")
    # The model's vocabulary follows the tokenizer's unless set explicitly.
    assert tables["pretrain"]["model"]["vocab_size"] == tables["tokenizer"]["tokenizer"]["vocab_size"]


def test_stage_order_matches_the_stage_list():
    assert [s.name for s in all_stages()] == list(STAGE_NAMES)


def test_unknown_key_in_a_stage_table_names_the_stage_and_key():
    with pytest.raises(ScratchError) as e:
        load_config(PipelineConfig, ROOT / "configs/pipeline/micro.toml", ["pretrain.train.max_stepz=3"])
    assert "[pretrain]" in e.value.message and "train.max_stepz" in e.value.message
    with pytest.raises(ScratchError, match="unknown stage 'trian'"):
        load_config(PipelineConfig, ROOT / "configs/pipeline/micro.toml", ["skip=['trian']"])


def test_overrides_reach_the_stage_and_change_its_fingerprint_input(tmp_path):
    base = stage_tables(load_config(PipelineConfig, ROOT / "configs/pipeline/micro.toml"))
    cfg = load_config(PipelineConfig, ROOT / "configs/pipeline/micro.toml",
                      ["pretrain.train.max_steps=7", "tokenizer.tokenizer.vocab_size=300"])
    tables = stage_tables(cfg)
    assert tables["pretrain"]["train"]["max_steps"] == 7
    assert tables["pretrain"]["model"]["vocab_size"] == 300
    assert tables["data"] == base["data"] and tables["tokenizer"] != base["tokenizer"]


def test_dpo_prompts_follow_the_sft_system_message_unless_set():
    demo = ROOT / "configs/pipeline/cpu-demo.toml"
    assert stage_tables(load_config(PipelineConfig, demo))["dpo"]["data"]["system_prompt"] is True  # SFT's default
    cfg = load_config(PipelineConfig, demo, ["sft.data.system_prompt=false"])
    assert stage_tables(cfg)["dpo"]["data"]["system_prompt"] is False
    cfg = load_config(PipelineConfig, demo, ["dpo.data.system_prompt=false"])
    assert stage_tables(cfg)["dpo"]["data"]["system_prompt"] is False and stage_tables(cfg)["sft"]["data"]["system_prompt"]


def test_alignment_comparison_is_off_by_default_and_follows_the_run_when_on(tmp_path):
    demo = ROOT / "configs/pipeline/cpu-demo.toml"
    assert stage_tables(load_config(PipelineConfig, demo))["align_compare"] == {"enabled": False}
    cfg = load_config(PipelineConfig, demo, [f"run_dir={tmp_path}", "compare_alignment=true",
                                             "align_compare.compare.budget_tokens=99", "sft.data.system_prompt=false"])
    table = stage_tables(cfg)["align_compare"]
    assert table["out_dir"] == str(tmp_path / "align_compare") and table["compare"]["budget_tokens"] == 99
    assert table["models"]["policy"] == str(tmp_path / "sft" / "model")
    assert table["models"]["tokenizer"] == str(tmp_path / "tokenizer") and table["data"]["system_prompt"] is False
    assert table["compare"]["methods"] == ["dpo", "ppo", "grpo", "rloo"]  # configs/align/compare.toml underneath
    with pytest.raises(ScratchError, match="align_compare"):
        load_config(PipelineConfig, demo, ["compare_alignment=true", "align_compare.compare.methods=['sft']"])



def test_alignment_comparison_without_its_sft_model_is_refused_before_anything_runs():
    micro = ROOT / "configs/pipeline/micro.toml"  # compare_alignment = true
    with pytest.raises(ScratchError, match="needs the sft stage") as e:
        load_config(PipelineConfig, micro, ["skip=['sft']"])
    assert "align_compare" in e.value.hint
    cfg = load_config(PipelineConfig, micro, ["skip=['sft', 'align_compare']"])
    assert cfg.skip == ["sft", "align_compare"]


# One corpus per run (issue #23, item 2).

MY_FILES = '[{kind="files", domain="prose", paths=["my_texts/"]}]'


def test_tokenizer_follows_data_sources():
    cfg = load_config(PipelineConfig, ROOT / "configs/pipeline/cpu-demo.toml",
                      [f"data.sources={MY_FILES}", "data.mix.weights={prose=1.0}"])
    corpus = cfg.tokenizer_config().corpus
    assert corpus.files == [] and [s.kind for s in corpus.source_configs()] == ["files"]
    assert corpus.source_configs()[0].paths == ["my_texts/"]
    assert stage_tables(cfg)["tokenizer"]["corpus"]["sources"][0]["paths"] == ["my_texts/"]
    # The preset's own corpus (the embedded one) is what it follows when data.sources is not changed.
    micro = load_config(PipelineConfig, ROOT / "configs/pipeline/micro.toml")
    kinds = [s.kind for s in micro.tokenizer_config().corpus.source_configs()]
    assert kinds == [s.kind for s in micro.data_config().sources] == ["embedded", "synthetic"]


def test_tokenizer_corpus_of_its_own_is_refused_in_a_pipeline():
    with pytest.raises(ScratchError, match="trains on the run's corpus, data.sources"):
        load_config(PipelineConfig, ROOT / "configs/pipeline/micro.toml", ['tokenizer.corpus.files=["x/"]'])


def test_a_table_override_replaces_as_in_data_prepare():
    from scratchllm.data.config import DataConfig

    pipe = load_config(PipelineConfig, ROOT / "configs/pipeline/cpu-demo.toml", ["data.mix.weights={prose=1.0}"])
    alone = load_config(DataConfig, ROOT / "configs/data/default.toml", ["mix.weights={prose=1.0}"])
    assert pipe.data_config().mix.weights == alone.mix.weights == {"prose": 1.0}
    # Sections still merge key by key, and the model table merges with its preset.
    assert pipe.data_config().mix.max_upsample == alone.mix.max_upsample
    assert pipe.train_config().model.n_layers == 5 and pipe.train_config().model.d_model == 128


def test_weights_for_a_domain_no_source_gives_fail_before_anything_runs():
    # Only prose from files, while the preset's weights still ask for code: refused at load time.
    with pytest.raises(ScratchError, match="no source produces domain 'code'"):
        load_config(PipelineConfig, ROOT / "configs/pipeline/cpu-demo.toml", [f"data.sources={MY_FILES}"])


def test_eval_and_quantize_tables_are_the_commands_configs(tmp_path):
    """[eval] is scratchllm eval's EvalConfig and [quantize] scratchllm quantize's QuantizeConfig: presets,
    keys and types as in the commands, the run's paths set by the pipeline."""
    from scratchllm.eval.config import EvalConfig
    from scratchllm.infer.config import QuantizeConfig

    cfg = load_config(PipelineConfig, "configs/pipeline/micro.toml",
                      [f"run_dir={tmp_path}", 'eval.preset="eval/quick"', "eval.limit=7", "quantize.mode=int4"])
    e, q = cfg.eval_config(), cfg.quantize_config()
    assert isinstance(e, EvalConfig) and isinstance(q, QuantizeConfig)
    assert e.tasks == ["ppl", "mc"] and e.limit == 7  # the preset under the table
    assert e.generations.prompts == ["The ", "What is 2+3?"] and e.generations.system  # the pipeline's defaults under
    assert e.tokenizer == str(tmp_path / "tokenizer") and e.baseline_text == [str(tmp_path / "data")]
    assert q.out_dir == tmp_path / "quantize" and q.mode == "int4"
    for override, message in [("eval.sample_prompts=['x']", "[eval] sample_prompts is now generations.prompts"),
                              ("eval.limt=3", "[eval] unknown config key 'limt'"),
                              ("quantize.mode=int5", "[quantize] config key 'mode' must be one of")]:
        with pytest.raises(ScratchError) as err:
            load_config(PipelineConfig, "configs/pipeline/micro.toml", [f"run_dir={tmp_path}", override])
        assert message in err.value.message
