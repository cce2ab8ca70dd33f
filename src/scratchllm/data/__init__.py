"""Data preparation: embedded corpus, ingest, clean, filter, deduplicate, mix, shard."""
