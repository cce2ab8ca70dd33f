"""The infer tests use the serve tests' tiny seeded model and fixtures (one definition, in tests/serve/conftest.py)."""

from ..serve.conftest import VOCAB, _one_thread, byte_tokenizer, make_model, tiny_model  # noqa: F401
