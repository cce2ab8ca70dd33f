"""Byte-level BPE tokenizer: training, encoding, decoding, save/load, Hugging Face interop."""
