"""Shapes of known base models, so `plan` can count LoRA parameters without loading weights.

A base model is matched by its hub id (LoRA Land's bases and SmolLM2), or, for a local folder, by
reading its `config.json`. Only plain JSON is read here: no torch, no transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Architecture:
    name: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    total_params: int

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each per-layer linear module, by Llama/Mistral names."""
        h, q, kv = self.hidden_size, self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        i = self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tied_embeddings else 2)


def llama_like_params(
    hidden: int, inter: int, layers: int, heads: int, kv_heads: int, head_dim: int, vocab: int, tied: bool
) -> int:
    """Parameter count of a Llama/Mistral-style decoder (no biases, RMSNorm)."""
    attn = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2
    mlp = 3 * hidden * inter
    per_layer = attn + mlp + 2 * hidden
    return layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden


def _llama_like(
    name: str, h: int, i: int, n: int, heads: int, kv: int, vocab: int, tied: bool = False, head_dim: int | None = None
) -> Architecture:
    hd = head_dim or h // heads
    return Architecture(
        name, h, i, n, heads, kv, hd, vocab, tied, llama_like_params(h, i, n, heads, kv, hd, vocab, tied)
    )


KNOWN: dict[str, Architecture] = {
    a.name: a
    for a in (
        _llama_like("mistral-7b", 4096, 14336, 32, 32, 8, 32000),
        _llama_like("llama-2-7b", 4096, 11008, 32, 32, 32, 32000),
        _llama_like("smollm2-135m", 576, 1536, 30, 9, 3, 49152, tied=True),
        _llama_like("smollm2-360m", 960, 2560, 32, 15, 5, 49152, tied=True),
        _llama_like("smollm2-1.7b", 2048, 8192, 24, 32, 32, 49152, tied=True),
        # Gemma uses a 256-wide head and tied embeddings; its MLP names match Llama's.
        _llama_like("gemma-2b", 2048, 16384, 18, 8, 1, 256000, tied=True, head_dim=256),
        _llama_like("gemma-7b", 3072, 24576, 28, 16, 16, 256000, tied=True, head_dim=256),
    )
}

# Hub ids (lower case) whose weights have one of the shapes above.
_ALIASES = {
    "mistral-7b": "mistral-7b",
    "zephyr-7b": "mistral-7b",
    "llama-2-7b": "llama-2-7b",
    "smollm2-135m": "smollm2-135m",
    "smollm2-360m": "smollm2-360m",
    "smollm2-1.7b": "smollm2-1.7b",
    "gemma-2b": "gemma-2b",
    "gemma-7b": "gemma-7b",
}


def from_config(config: dict[str, Any], name: str) -> Architecture | None:
    """An Architecture from a transformers config.json of a Llama-like model, else None."""
    try:
        h = int(config["hidden_size"])
        i = int(config["intermediate_size"])
        n = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
        kv = int(config.get("num_key_value_heads") or heads)
        vocab = int(config["vocab_size"])
    except (KeyError, TypeError, ValueError):
        return None
    head_dim = int(config.get("head_dim") or h // heads)
    tied = bool(config.get("tie_word_embeddings", False))
    return _llama_like(name, h, i, n, heads, kv, vocab, tied=tied, head_dim=head_dim)


def find_architecture(base_model: str, local_dir: Path | None = None) -> Architecture | None:
    """The architecture of `base_model`: from its config.json if it is a local folder, else by
    its hub id or file name. None when it is not known."""
    if local_dir is not None and (local_dir / "config.json").is_file():
        try:
            config = json.loads((local_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            found = from_config(config, local_dir.name)
            if found:
                return found
    key = base_model.lower().replace("_", "-")
    for alias, name in _ALIASES.items():
        if alias in key:
            return KNOWN[name]
    return None


def lora_modules(arch: Architecture, target_modules: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    shapes = arch.linear_shapes()
    if "all-linear" in target_modules:
        return shapes
    return {m: shapes[m] for m in target_modules if m in shapes}


def lora_trainable_params(arch: Architecture, target_modules: tuple[str, ...], r: int) -> int:
    """LoRA adds A (r x in) and B (out x r) per targeted module per layer."""
    per_layer = sum(r * (fan_in + fan_out) for fan_in, fan_out in lora_modules(arch, target_modules).values())
    return per_layer * arch.num_layers


def unknown_target_modules(arch: Architecture, target_modules: tuple[str, ...]) -> list[str]:
    shapes = arch.linear_shapes()
    return [m for m in target_modules if m != "all-linear" and m not in shapes]
