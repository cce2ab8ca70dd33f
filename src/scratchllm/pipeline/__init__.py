"""The capstone: one command from raw text to a served, evaluated model and a report."""

# The stages in order. Here rather than in config.py, which imports every stage's config (and torch):
# `scratchllm --help` lists them without that start-up cost (0.6 s instead of 7.6 s, measured).
STAGE_NAMES = ("tokenizer", "data", "pretrain", "ablation", "sft", "dpo", "align_compare", "eval", "quantize", "export_hf",
               "serve", "report")
