"""Hugging Face interop: export to / import from the ``LlamaForCausalLM`` directory layout.

Our weights use HF Llama's shapes and its "rotate-half" RoPE layout, so conversion is a rename:

    tok_emb                  <-> model.embed_tokens
    layers.N.attn_norm       <-> model.layers.N.input_layernorm
    layers.N.attn.X_proj     <-> model.layers.N.self_attn.X_proj      (X = q, k, v, o)
    layers.N.mlp_norm        <-> model.layers.N.post_attention_layernorm
    layers.N.mlp.Y_proj      <-> model.layers.N.mlp.Y_proj            (Y = gate, up, down)
    norm                     <-> model.norm
    lm_head                  <-> lm_head

``transformers`` is not needed for either direction; it is only the reference in tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from scratchllm.errors import ScratchError
from scratchllm.io import atomic_write_text
from scratchllm.model.checkpoint import (
    QUANT_FILE,
    load_checked,
    load_pretrained,
    read_json,
    read_safetensors,
    write_safetensors,
)
from scratchllm.model.config import ExportHFConfig
from scratchllm.model.model import ModelConfig, Transformer
from scratchllm.model.paths import find_tokenizer, resolve_model_dir
from scratchllm.stage import StageResult
from scratchllm.tokenizer import Tokenizer
from scratchllm.tokenizer.chat import END

_LAYER_PARTS = {"attn_norm": "input_layernorm", "attn": "self_attn", "mlp_norm": "post_attention_layernorm", "mlp": "mlp"}
_TOP_LEVEL = {"tok_emb": "model.embed_tokens", "norm": "model.norm", "lm_head": "lm_head"}


def to_hf_name(name: str) -> str:
    m = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(.+)", name)
    if m:
        return f"model.layers.{m[1]}.{_LAYER_PARTS[m[2]]}.{m[3]}"
    head, _, rest = name.partition(".")
    return f"{_TOP_LEVEL[head]}.{rest}"


def from_hf_name(name: str) -> str | None:
    """Our name for an HF tensor name, or None if it is not part of a Llama checkpoint we know."""
    m = re.fullmatch(r"model\.layers\.(\d+)\.(\w+)\.(.+)", name)
    if m:
        ours = {v: k for k, v in _LAYER_PARTS.items()}.get(m[2])
        return f"layers.{m[1]}.{ours}.{m[3]}" if ours else None
    for ours, theirs in _TOP_LEVEL.items():
        if name.startswith(theirs + "."):
            return ours + name[len(theirs) :]
    return None


# --- export -------------------------------------------------------------------------------------------


def hf_config(cfg: ModelConfig, bos_id: int | None = None, eos_id: int | None = None, pad_id: int | None = None) -> dict[str, Any]:
    """The ``config.json`` of the equivalent ``LlamaForCausalLM``."""
    if cfg.pos_emb != "rope":
        raise ScratchError(
            f"only RoPE models can be exported to Hugging Face Llama; this model uses pos_emb={cfg.pos_emb!r}",
            "Llama has no absolute position embeddings; train with pos_emb=rope to export",
        )
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        # transformers >= 5 reads rope_parameters; older versions read rope_theta.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": "float32",
        "use_cache": True,
    }


def export_hf(model: Transformer, out_dir: str | Path, tokenizer: Any | None = None) -> Path:
    """Write config.json + model.safetensors (+ tokenizer files) loadable by ``transformers`` offline.

    ``tokenizer`` is a ``scratchllm.tokenizer.Tokenizer``; its special-token ids go into the config.
    """
    out_dir = Path(out_dir)
    cfg = model.cfg
    bos = eos = pad = None
    if tokenizer is not None:
        if tokenizer.vocab_size > cfg.vocab_size:
            raise ScratchError(
                f"the tokenizer has {tokenizer.vocab_size} tokens but the model's vocab_size is {cfg.vocab_size}",
                "export with the tokenizer the model was trained with",
            )
        bos, eos, pad = (_special_id(tokenizer, name) for name in ("bos_id", "eos_id", "pad_id"))
    config = hf_config(cfg, bos, eos, pad)
    state = model.state_dict()
    if cfg.tie_embeddings:
        del state["lm_head.weight"]  # HF re-ties lm_head to embed_tokens when tie_word_embeddings is true
    out_dir.mkdir(parents=True, exist_ok=True)
    write_safetensors(out_dir / "model.safetensors", {to_hf_name(k): v for k, v in state.items()}, {"format": "pt"})
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    end_turn = tokenizer.special_tokens.get(END) if tokenizer is not None else None
    if end_turn is not None and eos is not None:
        # A chat reply ends with <|end|>, not <|eos|>: list both, as Llama 3 and Qwen exports do, so
        # transformers' generate (and a PeftModel on top) stops at the end of the turn.
        generation["eos_token_id"] = [eos, end_turn]
    atomic_write_text(out_dir / "generation_config.json", json.dumps(generation, indent=2) + "\n")
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir, model_max_length=cfg.context_length)
    return out_dir


def run(cfg: ExportHFConfig) -> StageResult:
    """Export ``cfg.model`` to ``cfg.out_dir`` with its tokenizer: the one body of ``scratchllm export hf``
    and the pipeline's export_hf stage. Outputs: ``model`` (the export) and ``source`` (the model directory)."""
    if not cfg.model or cfg.out_dir is None:
        raise ScratchError("export hf needs a model and an out_dir",
                           "pass model=DIR out_dir=DIR (or: scratchllm export hf DIR --out DIR)")
    model_dir = resolve_model_dir(cfg.model)
    if (model_dir / QUANT_FILE).is_file():
        raise ScratchError(f"{model_dir} is a quantized model; export needs the full-precision weights",
                           "pass the model directory that was quantized")
    model = load_pretrained(model_dir).eval()
    # The tokenizer found where generate, chat and serve find it (a fine-tuned model/ holds its own):
    # without it AutoTokenizer cannot load the export.
    tok_dir = Path(cfg.tokenizer) if cfg.tokenizer else find_tokenizer(cfg.model, model_dir)
    tokenizer = Tokenizer.load(tok_dir) if tok_dir else None
    out = export_hf(model, cfg.out_dir, tokenizer)
    return StageResult(outputs={"model": out, "source": model_dir},
                       metrics={"tokenizer": str(tok_dir) if tokenizer else None, "parameters": model.num_params()})


def _special_id(tokenizer: Any, attr: str) -> int | None:
    try:
        return getattr(tokenizer, attr)
    except ScratchError:  # the tokenizer has no such special token
        return None


# --- import -------------------------------------------------------------------------------------------


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Our ModelConfig for a Llama ``config.json``; refuses features our model does not implement."""

    def need(key: str) -> Any:
        if key not in hf:
            raise ScratchError(f"{source}: missing key {key!r}", "is this a Hugging Face Llama config.json?")
        return hf[key]

    if hf.get("model_type") != "llama":
        ours = "d_model" in hf and "model_type" not in hf
        raise ScratchError(
            f"{source}: model_type is {hf.get('model_type')!r}, only 'llama' can be imported",
            "this is already a scratchllm model directory: use it directly" if ours
            else "import a LlamaForCausalLM checkpoint",
        )
    unsupported = {
        "hidden_act": (hf.get("hidden_act", "silu"), "silu"),
        "attention_bias": (hf.get("attention_bias", False), False),
        "mlp_bias": (hf.get("mlp_bias", False), False),
        "pretraining_tp": (hf.get("pretraining_tp", 1), 1),
    }
    for key, (got, want) in unsupported.items():
        if got != want:
            raise ScratchError(f"{source}: {key}={got!r} is not supported (need {want!r})")
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ScratchError(f"{source}: RoPE scaling {rope_type!r} is not supported", "only plain RoPE can be imported")
    d_model, n_heads = need("hidden_size"), need("num_attention_heads")
    if hf.get("head_dim") not in (None, d_model // n_heads):
        raise ScratchError(f"{source}: head_dim={hf['head_dim']} != hidden_size/num_attention_heads is not supported")
    cfg = ModelConfig(
        vocab_size=need("vocab_size"),
        context_length=need("max_position_embeddings"),
        d_model=d_model,
        n_layers=need("num_hidden_layers"),
        n_heads=n_heads,
        n_kv_heads=hf.get("num_key_value_heads") or n_heads,
        d_ff=need("intermediate_size"),
        pos_emb="rope",
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )
    try:
        cfg.validate()
    except ScratchError as e:
        raise ScratchError(f"{source}: {e.message}", e.hint) from None
    return cfg


def import_hf(hf_dir: str | Path) -> Transformer:
    """Our model from a Hugging Face Llama directory (config.json + model.safetensors, or shards)."""
    hf_dir = Path(hf_dir)
    if not hf_dir.is_dir():
        raise ScratchError(f"Hugging Face model directory not found: {hf_dir}")
    cfg = config_from_hf(read_json(hf_dir / "config.json"), str(hf_dir / "config.json"))
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(hf_dir):
        for name, tensor in read_safetensors(path).items():
            ours = from_hf_name(name)
            if ours is None:
                if name.endswith("rotary_emb.inv_freq"):  # old exports saved this derived buffer; skip it
                    continue
                raise ScratchError(f"{path}: unexpected tensor {name!r}", "only plain LlamaForCausalLM weights import")
            state[ours] = tensor
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)  # some exporters store the tied copy anyway
    model = Transformer(cfg)
    load_checked(model, state, hf_dir / "model.safetensors")
    return model


def _weight_files(hf_dir: Path) -> list[Path]:
    if (hf_dir / "model.safetensors").is_file():
        return [hf_dir / "model.safetensors"]
    index = hf_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ScratchError(f"{index}: no 'weight_map' object", "the index file is corrupt")
        return [hf_dir / name for name in sorted(set(weight_map.values()))]
    hint = "convert it to safetensors first" if (hf_dir / "pytorch_model.bin").exists() else None
    raise ScratchError(f"no model.safetensors (or model.safetensors.index.json) in {hf_dir}", hint)
