"""Raw text and the token-shard format: the layer below the tokenizer, the data stage, training and eval.

``embedded`` (the corpus that ships with Python, ``Document``), ``ingest`` (files and folders in every
supported format), ``clean`` (normalisation), ``synthetic`` (model-free generators), ``config``
(``SourceConfig``, ``CleanConfig``) and ``shards`` (the shard writer, manifest and reader). The
curation stage built on it (filters, dedup, decontamination, mixing, prepare) is ``scratchllm.data``.
"""
