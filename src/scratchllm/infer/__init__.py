"""Inference: sampling, the KV cache, the continuous-batching engine, speculative decoding, compile, quantization."""
