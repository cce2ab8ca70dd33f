"""The ``scratchllm pipeline`` config: one run directory, one table per stage.

Each stage's table is that stage's own config (the same keys as its configs/<stage>/*.toml), with an
optional ``preset = "configs/<stage>/x.toml"`` to start from and keys to override on top of it. The
pipeline sets every path itself (all outputs go under ``run_dir``), so paths in the tables are ignored
and overwritten. Unknown keys and wrong types fail before anything runs, naming the key::

    run_dir = "runs/pipeline/cpu-demo"
    [tokenizer]  preset = "configs/tokenizer/default.toml"   (TokenizerTrainConfig)
    [data]       preset = "configs/data/default.toml"        (DataConfig)
    [pretrain]   preset = "configs/train/cpu-tiny.toml"      (TrainConfig)
    [sft] [dpo]  the fine-tuning and alignment stages' configs
    [eval]       EvalConfig (scratchllm eval): held-out perplexity vs n-gram baselines, tasks, generations
    [quantize]   QuantizeConfig (scratchllm quantize)
    [export_hf] [serve] [report]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.align.config import DPOConfig
from scratchllm.config import apply_preset, from_dict, merge_tables, set_dotted, to_dict
from scratchllm.data.config import DataConfig
from scratchllm.errors import ScratchError
from scratchllm.eval.config import EvalConfig
from scratchllm.finetune.config import FinetuneConfig
from scratchllm.infer.config import QuantizeConfig
from scratchllm.model.model import ModelConfig
from scratchllm.pipeline import STAGE_NAMES
from scratchllm.tokenizer.config import TokenizerTrainConfig
from scratchllm.train.config import TrainConfig



@dataclass
class AblationConfig:
    """Position-scheme ablation: the pretrain config retrained for ``steps`` steps with each scheme."""

    pos_emb: list[str] = field(default_factory=list)  # e.g. ["rope", "sinusoidal", "learned"]; empty: not run
    steps: int = 200

    def validate(self) -> None:
        bad = [p for p in self.pos_emb if p not in ("rope", "sinusoidal", "learned")]
        if bad:
            raise ScratchError(f"ablation.pos_emb: unknown scheme {bad[0]!r}", "choose from rope, sinusoidal, learned")
        if self.steps < 1:
            raise ScratchError(f"ablation.steps must be >= 1, got {self.steps}")


@dataclass
class ExportHFStageConfig:
    """The export itself is `scratchllm export hf` (ExportHFConfig: paths only, set by the pipeline); this
    is the pipeline's check of it."""

    check_with_transformers: bool = True  # load the export with transformers and compare its logits with ours


# The pipeline's eval stage starts from these (under the [eval] table): sample generations of every
# model, plain prompts for the base model (sampled), the same prompts as a user turn after a system
# message for the chat models (greedy, as the fine-tuning stages measure their accuracy).
EVAL_DEFAULTS: dict[str, Any] = {"generations": {
    "prompts": ["The ", "def ", "What is 37 + 50?"],
    "system": "You are a helpful assistant. Answer with the answer only.",
}}
# [eval] keys of the pipeline's own eval config before it became EvalConfig: where they went.
_MOVED_EVAL_KEYS = {"sample_prompts": "generations.prompts", "chat_system": "generations.system",
                    "sample_tokens": "generations.max_tokens", "top_k": "generations.top_k"}


@dataclass
class ServeCheckConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    model: str = "quantized"  # which model the check serves: "quantized" or "final" (the last trained one)
    prompt: str = "The "
    chat_prompt: str = "What is Python?"
    max_tokens: int = 24
    startup_timeout: float = 120.0  # seconds to wait for the server to answer
    model_name: str = "scratchllm"  # the id the server answers to

    def validate(self) -> None:
        if self.model not in ("quantized", "final"):
            raise ScratchError(f"serve.model must be 'quantized' or 'final', got {self.model!r}")
        if not 0 <= self.port < 65536 or self.max_tokens < 1 or self.startup_timeout <= 0:
            raise ScratchError("serve: port must be in [0, 65535], max_tokens >= 1, startup_timeout > 0")


@dataclass
class ReportConfig:
    title: str = "scratchllm pipeline run"


@dataclass
class PipelineConfig:
    run_dir: Path = Path("runs/pipeline/cpu-demo")
    seed: int = 1337
    device: str = "auto"  # "auto", "cpu" or "cuda": used by every stage that runs a model
    threads: int = 0  # torch CPU threads for every stage (0: torch's default); 1 is fastest on a loaded machine
    skip: list[str] = field(default_factory=list)  # stages to leave out (their outputs are not made)
    tokenizer: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    ablation: AblationConfig = field(default_factory=AblationConfig)
    sft: dict[str, Any] = field(default_factory=dict)
    dpo: dict[str, Any] = field(default_factory=dict)
    # The alignment methods compared (align/compare.py): off by default, so the demo's time does not change.
    compare_alignment: bool = False
    align_compare: dict[str, Any] = field(default_factory=dict)  # a CompareConfig table (preset: configs/align/compare.toml)
    eval: dict[str, Any] = field(default_factory=dict)  # EvalConfig (scratchllm eval)
    quantize: dict[str, Any] = field(default_factory=dict)  # QuantizeConfig (scratchllm quantize)
    export_hf: ExportHFStageConfig = field(default_factory=ExportHFStageConfig)
    serve: ServeCheckConfig = field(default_factory=ServeCheckConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def validate(self) -> None:
        bad = [s for s in self.skip if s not in STAGE_NAMES]
        if bad:
            raise ScratchError(f"skip: unknown stage {bad[0]!r}", f"stages: {', '.join(STAGE_NAMES)}")
        if self.threads < 0:
            raise ScratchError(f"threads must be >= 0, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ScratchError(f"device must be auto, cpu or cuda, got {self.device!r}")
        # Resolve the tables of the stages that exist today so a typo fails before hours of training.
        self.tokenizer_config(), self.data_config(), self.train_config(), self.sft_config(), self.dpo_config()
        self.eval_config(), self.quantize_config()
        if self.compare_alignment:
            if "sft" in self.skip and "align_compare" not in self.skip:
                raise ScratchError("compare_alignment = true needs the sft stage (every method starts from its model), "
                                   "but skip leaves sft out",
                                   "also skip the comparison (skip=[..., \"align_compare\"]) or set compare_alignment=false")
            self.align_compare_config()

    # The resolved stage configs, every path pointing into run_dir.

    def _training(self, name: str, cls: type, table: dict[str, Any], paths: dict[str, Any]) -> Any:
        """A training stage's config: its table with the run's paths, seed, device and thread count."""
        table = merged(table, {k: v if isinstance(v, int | str) else str(v) for k, v in paths.items()}, cls)
        table.setdefault("seed", self.seed)
        if name == "pretrain" and "vocab_size" not in table.get("model", {}):
            # The model's vocabulary follows the tokenizer's (over a model preset's), unless set here.
            table["model"] = {**apply_preset(ModelConfig, table.get("model", {}), "model"),
                              "vocab_size": self.tokenizer_config().tokenizer.vocab_size}
        train = table.setdefault("train", {})
        if self.device != "auto":
            train["device"] = self.device
        if self.threads:
            train.setdefault("num_threads", self.threads)
        return _section(name, cls, table)

    def tokenizer_config(self) -> TokenizerTrainConfig:
        own = self.tokenizer.get("corpus", {})
        if isinstance(own, dict) and ({"files", "sources", "domains"} & set(own)):
            raise ScratchError("[tokenizer] the pipeline's tokenizer trains on the run's corpus, data.sources",
                               "set data.sources instead of tokenizer.corpus.files/sources/domains")
        # One corpus per run: the tokenizer reads the data stage's sources (its byte cap still applies).
        sources = [to_dict(s) for s in self.data_config().sources]
        forced = {"out_dir": str(self.run_dir / "tokenizer"), "corpus.sources": sources, "corpus.files": []}
        return _section("tokenizer", TokenizerTrainConfig, merged(self.tokenizer, forced, TokenizerTrainConfig))

    def data_config(self) -> DataConfig:
        forced = {"out_dir": str(self.run_dir / "data"), "tokenizer": str(self.run_dir / "tokenizer")}
        return _section("data", DataConfig, merged(self.data, forced, DataConfig))

    def train_config(self) -> TrainConfig:
        r = self.run_dir
        return self._training("pretrain", TrainConfig, self.pretrain, {
            "out_dir": r / "pretrain", "data.path": r / "data", "data.tokenizer": r / "tokenizer"})

    def ablation_config(self, scheme: str) -> TrainConfig:
        """The pretrain config, shortened to ablation.steps, with positions ``scheme``, in its own folder."""
        r, steps = self.run_dir, self.ablation.steps
        return self._training("pretrain", TrainConfig, self.pretrain, {
            "out_dir": r / "ablation" / scheme, "data.path": r / "data", "data.tokenizer": r / "tokenizer",
            "model.pos_emb": scheme, "train.max_steps": steps, "train.max_tokens": 0,
            "eval.interval": max(1, steps // 4), "eval.sample_interval": 0, "eval.sample_tokens": 0,
            "checkpoint.interval": max(1, steps // 4)})

    def sft_config(self) -> FinetuneConfig:
        r = self.run_dir
        return self._training("sft", FinetuneConfig, self.sft, {
            "out_dir": r / "sft", "base.checkpoint": r / "pretrain", "base.tokenizer": r / "tokenizer"})

    def dpo_config(self) -> DPOConfig:
        r = self.run_dir
        paths: dict[str, Any] = {
            "out_dir": r / "dpo", "models.policy": r / "sft" / "model", "models.tokenizer": r / "tokenizer"}
        if "system_prompt" not in merged(self.dpo, None, DPOConfig).get("data", {}):
            # Prompts the way the SFT stage taught the chat format: with its system message or without.
            paths["data.system_prompt"] = self.sft_config().data.system_prompt
        return self._training("dpo", DPOConfig, self.dpo, paths)

    def align_compare_config(self):  # -> CompareConfig
        from scratchllm.align.compare import CompareConfig

        r = self.run_dir
        table = {"preset": "configs/align/compare.toml", **self.align_compare}
        paths: dict[str, Any] = {
            "out_dir": r / "align_compare", "models.policy": r / "sft" / "model", "models.tokenizer": r / "tokenizer"}
        if "system_prompt" not in merged(table, None, CompareConfig).get("data", {}):
            paths["data.system_prompt"] = self.sft_config().data.system_prompt  # as the SFT stage prompted
        return self._training("align_compare", CompareConfig, table, paths)

    def eval_config(self) -> EvalConfig:
        """The eval stage's EvalConfig with the run's paths; the stage fills in each model's own
        (model, name, out_dir, the held-out task) and fits the baselines with the first model only."""
        moved = [k for k in _MOVED_EVAL_KEYS if k in self.eval]
        if moved:
            raise ScratchError(f"[eval] {moved[0]} is now {_MOVED_EVAL_KEYS[moved[0]]} (the eval stage's config is "
                               "scratchllm eval's EvalConfig)", f"write eval.{_MOVED_EVAL_KEYS[moved[0]]} instead")
        r = self.run_dir
        forced = {"tokenizer": str(r / "tokenizer"), "baseline_text": [str(r / "data")], "heldout_data": "",
                  "seed": self.seed}
        table = merge_tables(EVAL_DEFAULTS, merged(self.eval, None, EvalConfig), EvalConfig)  # defaults < preset
        return _section("eval", EvalConfig, merged(table, forced, EvalConfig))

    def quantize_config(self) -> QuantizeConfig:
        """The quantize stage's QuantizeConfig; the stage sets ``model`` (the last trained model)."""
        r = self.run_dir
        forced = {"out_dir": str(r / "quantize"), "tokenizer": str(r / "tokenizer")}
        return _section("quantize", QuantizeConfig, merged(self.quantize, forced, QuantizeConfig))


def merged(table: dict[str, Any], forced: dict[str, Any] | None = None, cls: type | None = None) -> dict[str, Any]:
    """A stage table with its ``preset`` file underneath (config.apply_preset, the one merge every
    command uses) and ``forced`` (dotted keys: the run's paths) on top."""
    out = apply_preset(cls, table) if cls is not None else dict(table)
    for key, value in (forced or {}).items():
        set_dotted(out, key, value)
    return out


def _section(name: str, cls: type, table: dict[str, Any]) -> Any:
    try:
        return from_dict(cls, table)
    except ScratchError as e:
        raise ScratchError(f"[{name}] {e.message}", e.hint) from None


def stage_tables(cfg: PipelineConfig) -> dict[str, Any]:
    """What each stage's fingerprint is computed from (its resolved config)."""
    tables: dict[str, Any] = {
        "tokenizer": to_dict(cfg.tokenizer_config()),
        "data": to_dict(cfg.data_config()),
        "pretrain": to_dict(cfg.train_config()),
        "ablation": to_dict(cfg.ablation),
        "sft": to_dict(cfg.sft_config()),
        "dpo": to_dict(cfg.dpo_config()),
        "align_compare": to_dict(cfg.align_compare_config()) if cfg.compare_alignment else {"enabled": False},
        "eval": to_dict(cfg.eval_config()),
        "quantize": to_dict(cfg.quantize_config()),
        "export_hf": to_dict(cfg.export_hf),
        "serve": to_dict(cfg.serve),
        "report": to_dict(cfg.report),
    }
    # Runtime-only settings that do not change what a stage computes.
    for t in ("pretrain", "sft", "dpo", "align_compare"):
        tables[t].get("log", {}).pop("progress", None)
    return tables
