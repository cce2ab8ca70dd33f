"""Llama-style decoder-only transformer."""
