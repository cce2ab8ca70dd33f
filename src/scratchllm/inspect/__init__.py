"""See inside a model: ``scratchllm inspect tokens | embeddings | attention | memory``.

Each command writes a PNG (matplotlib), a self-contained HTML page (the PNG embedded, no external
files or scripts) and prints a short summary. This package reads models, tokenizers and training
configs, and never imports ``serve``; only ``inspect memory --measure`` runs the training stage's
optimizer and activation checkpointing, in a child process, to measure a real step.
"""
