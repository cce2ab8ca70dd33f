"""``EvalConfig``: everything ``scratchllm eval`` and the pipeline's eval stage are told.

``scratchllm eval --config FILE key=value ...`` like every other command (a shipped preset:
``--config eval/quick``); the flags of before remain as aliases for the keys of the same names
(``--out`` is ``out_dir``, ``--tasks a,b`` is ``tasks=["a","b"]``). The pipeline's ``[eval]`` table
holds the same keys; the pipeline sets the paths (model, out_dir, the held-out task) itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from scratchllm.errors import ScratchError

DEFAULT_BASELINES = ["unigram", "bigram", "kneser_ney"]


@dataclass
class GenerationsConfig:
    """Sample generations written next to the results (generations.json): what the model writes, to read.

    Plain text (sampled with temperature and top_k, stopping at <|eos|>), or with ``chat`` each prompt
    as a user turn after ``system`` in the chat format (greedy, stopping at the end of the turn, as the
    fine-tuning stages measure their accuracy)."""

    prompts: list[str] = field(default_factory=list)  # none: no generations
    chat: bool = False
    system: str = ""  # chat only; "" for no system message
    max_tokens: int = 48
    temperature: float = 0.8
    top_k: int = 50

    def validate(self) -> None:
        if self.max_tokens < 1 or self.temperature < 0 or self.top_k < 0:
            raise ScratchError("generations: max_tokens must be >= 1, temperature and top_k >= 0")


@dataclass
class EvalConfig:
    """One evaluation run: a model, the tasks, the settings. ``scratchllm eval --list-tasks`` lists the tasks."""

    tasks: list[str] = field(default_factory=list)  # task names, groups (mc, all) or task .toml paths
    model: str = ""  # model directory (ours or Hugging Face), or an OpenAI-compatible server's URL
    served_model: str = "default"  # with a URL model: the model name to request
    tokenizer: str = ""  # for our model directories; "" = the one found with the model
    backend: Literal["auto", "scratchllm", "hf"] = "auto"  # auto: ours for our directories, transformers for HF
    device: str = "cpu"
    name: str = ""  # the model's label in the results; "" = its directory's name
    out_dir: Path | None = None  # None: runs/eval/<name>
    limit: int | None = None  # evaluate only the first N examples of each task
    batch_size: int = 16
    stride: int | None = None  # perplexity window stride in tokens; None: the context length
    data: dict[str, str] = field(default_factory=dict)  # a local data file for a built-in task: {gsm8k = "..."}
    baselines: list[str] = field(default_factory=lambda: list(DEFAULT_BASELINES))  # n-gram baselines; [] for none
    # Text the baselines are fit on: files, or `data prepare` folders (their train split: your corpus).
    # Empty: the embedded corpus.
    baseline_text: list[str] = field(default_factory=list)
    baseline_train_tokens: int = 2_000_000  # of a prepared folder's train split (0: all of it)
    # A `data prepare` folder whose val split (up to heldout_documents documents; 0: all) is scored as the
    # perplexity task "heldout", written to out_dir/heldout. "": none.
    heldout_data: str = ""
    heldout_documents: int = 200
    max_tokens: int | None = None  # generated tokens per answer at most (default: each task's)
    samples: int | None = None  # code tasks: completions per problem (pass@k needs k <= samples)
    temperature: float | None = None  # code tasks: sampling temperature
    k: list[int] | None = None  # code tasks: the k of pass@k
    chat: bool = False  # chat-tuned model: generate, safety and judge prompts as a user turn in its template
    judge_url: str = ""  # OpenAI-compatible endpoint for judge tasks, e.g. http://127.0.0.1:8000/v1
    judge_model: str = "default"  # model name sent to the judge endpoint
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the judge's / endpoint's API key
    retries: int = 5  # judge / endpoint requests: retries with exponential backoff
    request_timeout: float = 120.0  # judge / endpoint requests: seconds
    judge_safety: bool = False  # classify safety responses with the judge instead of refusal patterns
    compare_model: str = ""  # judge task: also compare pairwise against this model directory
    log_samples: bool = False  # also write per-example samples_<task>.jsonl
    seed: int = 0
    progress: bool = True  # progress bars (shown on a terminal only)
    generations: GenerationsConfig = field(default_factory=GenerationsConfig)

    def validate(self) -> None:
        for key in ("limit", "batch_size", "stride", "samples", "max_tokens"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ScratchError(f"--{key.replace('_', '-')} must be at least 1, got {value}",
                                   f"set {key}=N (or --{key.replace('_', '-')} N) to 1 or more")
        if self.baseline_train_tokens < 0 or self.heldout_documents < 0:
            raise ScratchError("baseline_train_tokens and heldout_documents must be >= 0 (0: all)")
        if self.retries < 0 or self.request_timeout <= 0:
            raise ScratchError("retries must be >= 0 and request_timeout > 0")
