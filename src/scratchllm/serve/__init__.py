"""The OpenAI-compatible HTTP server and the generate/chat/serve CLI (generation itself: scratchllm.infer)."""
