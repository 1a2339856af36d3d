"""Build the demo models: random-weight Llama checkpoints plus a locally trained tokenizer.

No model hub is reachable on the machines Sluice is developed and tested on, yet the real
engine (vLLM) must run. These checkpoints exercise every code path of the platform, but their
weights are random: what they generate is noise. Real deployments point the catalog at real
weights.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
MARKER = "sluice-demo.json"


@dataclass(frozen=True)
class DemoShape:
    """Architecture of one demo model. head_dim must be 64: vLLM's CPU attention rejects 16."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int


DEMO_SHAPES: dict[str, DemoShape] = {
    "small": DemoShape(256, 2, 4, 2, 768, 4096),
    "large": DemoShape(512, 8, 8, 4, 1536, 8192),
}


def _training_corpus() -> list[str]:
    """Docstrings of the standard library: real English and code, available offline."""
    import builtins
    import collections
    import functools
    import itertools
    import os
    import re
    import string

    texts: list[str] = []
    for module in (builtins, collections, functools, itertools, os, re, string, json, inspect):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc:
                texts.append(doc)
    return texts


def build_tokenizer(out_dir: Path, vocab_size: int = 4096) -> int:
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|bos|>",
        eos_token="<|end|>",
        pad_token="<|pad|>",
        model_max_length=1_000_000,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return len(fast)


def build_model(name: str, shape: DemoShape, out_dir: Path, seed: int = 0) -> int:
    """Write one random-weight LlamaForCausalLM with its tokenizer; return its parameter count."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    (out_dir / MARKER).write_text(
        json.dumps({"name": name, "parameters": params, "note": "random weights: output is noise"})
    )
    return params


def build_demo_models(root: Path, force: bool = False) -> dict[str, Path]:
    """Build every demo model under root unless already built; return name -> path."""
    paths: dict[str, Path] = {}
    for name, shape in DEMO_SHAPES.items():
        path = root / name
        paths[name] = path
        if (path / MARKER).exists() and not force:
            print(f"[demo-models] {name}: already built at {path}", file=sys.stderr)
            continue
        print(f"[demo-models] building {name} ({shape.num_layers} layers, "
              f"hidden {shape.hidden_size}) ...", file=sys.stderr, flush=True)
        params = build_model(name, shape, path)
        print(f"[demo-models] {name}: {params / 1e6:.1f}M parameters -> {path}",
              file=sys.stderr, flush=True)
    return paths
