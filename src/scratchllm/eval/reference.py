"""lm-evaluation-harness on the same data: the reference our scores are checked against (tests, benchmarks).

Not used by ``scratchllm eval``; needs the ``lm-eval`` and ``transformers`` packages.

``LM_EVAL_TASKS`` holds lm-eval task definitions (lm-eval's own YAML format) for our embedded
multiple-choice and perplexity tasks, written by hand from the benchmarks' usual prompt formats,
independently of our TOML specs, so that agreement checks the prompt construction too.

lm-eval's ``hf`` model module imports ``accelerate`` at import time but uses it only for multi-GPU
runs. When ``accelerate`` is not installed, ``hf_lm`` installs a minimal single-process stand-in
and builds lm-eval's ``HFLM`` from an already-loaded ``transformers`` model (the path lm-eval takes
for a pre-initialised model, which skips its device-map set-up that needs accelerate); otherwise it
uses the plain ``model="hf"`` constructor. Either way the scoring code is lm-eval's.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

_HEADER = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: "{data}"
  cache_dir: "{cache}"
test_split: test
"""

LM_EVAL_TASKS: dict[str, str] = {
    "mmlu": """output_type: multiple_choice
doc_to_text: "The following are multiple choice questions (with answers) about {{subject.replace('_', ' ')}}.\\n\\n{{question.strip()}}\\nA. {{choices[0]}}\\nB. {{choices[1]}}\\nC. {{choices[2]}}\\nD. {{choices[3]}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "hellaswag": """output_type: multiple_choice
doc_to_text: "{{activity_label}}: {{ctx}}"
doc_to_choice: "{{endings}}"
doc_to_target: "{{label}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "arc": """output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: "{{choices.text}}"
doc_to_target: "{{choices.label.index(answerKey)}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""",
    "ppl": """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""",
}


def write_task_dir(out_dir: str | Path, data_files: dict[str, str | Path], prefix: str = "scratch_") -> list[str]:
    """Write ``<prefix><name>.yaml`` for each ``{name: data file}``; returns the lm-eval task names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name, data in data_files.items():
        task = prefix + name
        header = _HEADER.format(task=task, data=Path(data).resolve(), cache=out_dir.resolve() / "datasets-cache")
        (out_dir / f"{task}.yaml").write_text(header + LM_EVAL_TASKS[name], encoding="utf-8")
        names.append(task)
    return names


def _install_accelerate_stand_in() -> None:
    import torch
    import transformers  # noqa: F401  - let transformers record that accelerate is absent first

    class Accelerator:
        num_processes = 1
        process_index = 0
        local_process_index = 0
        is_local_main_process = True
        device = torch.device("cpu")

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    class InitProcessGroupKwargs:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            pass

    def find_executable_batch_size(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("batch_size='auto' needs the real accelerate package")

    accelerate = types.ModuleType("accelerate")
    utils = types.ModuleType("accelerate.utils")
    accelerate.Accelerator = Accelerator  # type: ignore[attr-defined]
    accelerate.InitProcessGroupKwargs = InitProcessGroupKwargs  # type: ignore[attr-defined]
    accelerate.find_executable_batch_size = find_executable_batch_size  # type: ignore[attr-defined]
    utils.get_max_memory = lambda *a, **k: {"cpu": 0}  # type: ignore[attr-defined]
    accelerate.utils = utils  # type: ignore[attr-defined]
    sys.modules["accelerate"] = accelerate
    sys.modules["accelerate.utils"] = utils


def hf_lm(hf_dir: str | Path, batch_size: int = 16) -> Any:
    """lm-eval's ``HFLM`` (the ``hf`` model type) on a Hugging Face directory, fp32 on CPU."""
    has_accelerate = "accelerate" in sys.modules or importlib.util.find_spec("accelerate") is not None
    if not has_accelerate:
        _install_accelerate_stand_in()
    import torch
    from lm_eval.models.huggingface import HFLM

    if has_accelerate:
        return HFLM(pretrained=str(hf_dir), dtype="float32", device="cpu", batch_size=batch_size)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(hf_dir), batch_size=batch_size)


def run_lm_eval(lm: Any, task_dir: str | Path, tasks: list[str], limit: int | None = None) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` over our local task YAMLs only; returns its results dict (with samples)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(task_dir), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, log_samples=True, limit=limit,
                                   bootstrap_iters=0)
