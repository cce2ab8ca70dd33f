"""scratchllm: a from-scratch pipeline for training your own transformer language model."""

__version__ = "0.1.0"
