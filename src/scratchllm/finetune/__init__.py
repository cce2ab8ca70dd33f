"""Instruction tuning, LoRA and QLoRA."""
