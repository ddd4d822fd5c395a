"""Build a model from a ModelSpec: weights from a Hugging Face checkpoint folder, or seeded random.

A checkpoint folder holds ``config.json`` and ``model.safetensors`` or sharded ``model-*.safetensors``
with ``model.safetensors.index.json``. The key mapping is a data table (HF key -> our key, ``{}`` for
the layer index, as nanoGPT's ``from_pretrained``); every tensor of the checkpoint is used exactly
once, every parameter of the model is filled once, and every shape is checked. Any mismatch is one
``CheckpointError`` naming the tensor.

A tied LM head (``tie_word_embeddings``) is the embedding matrix; a checkpoint that still stores
``lm_head.weight`` for a tied model has it shape-checked and otherwise ignored.
"""
from __future__ import annotations

import json
import os
import re
from typing import Mapping

import torch
from torch import nn

from reference.falcon import Falcon
from reference.llama import Llama
from sim.model import ModelSpec

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint folder that does not fit its config: missing, unexpected or misshapen tensors."""


_LLAMA_KEYS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}

_FALCON_KEYS = {
    "transformer.word_embeddings.weight": "tok_embeddings.weight",
    "transformer.h.{}.self_attention.dense.weight": "layers.{}.attention.wo.weight",
    "transformer.h.{}.mlp.dense_h_to_4h.weight": "layers.{}.mlp.w1.weight",
    "transformer.h.{}.mlp.dense_4h_to_h.weight": "layers.{}.mlp.w2.weight",
    "transformer.ln_f.weight": "norm.weight",
    "transformer.ln_f.bias": "norm.bias",
    "lm_head.weight": "output.weight",
    **{f"transformer.h.{{}}.self_attention.query_key_value.{p}": f"layers.{{}}.attention.wqkv.{p}"
       for p in ("weight", "bias")},
    **{f"transformer.h.{{}}.self_attention.dense.{p}": f"layers.{{}}.attention.wo.{p}" for p in ("bias",)},
    **{f"transformer.h.{{}}.mlp.dense_{a}.bias": f"layers.{{}}.mlp.{b}.bias"
       for a, b in (("h_to_4h", "w1"), ("4h_to_h", "w2"))},
}


def _falcon_norm_keys(spec: ModelSpec) -> dict[str, str]:
    """HF names the per-layer LayerNorms by layout: ln_attn/ln_mlp (new architecture, two norms),
    input_layernorm (one norm), input_layernorm/post_attention_layernorm (sequential)."""
    if spec.num_ln_per_layer == 1:
        names = {"input_layernorm": "attn_norm"}
    elif spec.parallel_attn:
        names = {"ln_attn": "attn_norm", "ln_mlp": "mlp_norm"}
    else:
        names = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
    return {f"transformer.h.{{}}.{hf}.{p}": f"layers.{{}}.{ours}.{p}"
            for hf, ours in names.items() for p in ("weight", "bias")}


def key_table(spec: ModelSpec) -> dict[str, str]:
    """HF key template -> our key template for this architecture."""
    if spec.family == "llama":
        return dict(_LLAMA_KEYS)
    return {**_FALCON_KEYS, **_falcon_norm_keys(spec)}


def build_model(spec: ModelSpec, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model with uninitialised weights, allocated directly on `device` in `dtype`."""
    cls = Llama if spec.family == "llama" else Falcon
    with torch.device("meta"):
        model = cls(spec).to(dtype)
    model.to_empty(device=device)
    if spec.tie_word_embeddings:  # to_empty keeps the tie; make sure of it
        model.output.weight = model.tok_embeddings.weight
    return model.eval().requires_grad_(False)


@torch.no_grad()
def random_model(spec: ModelSpec, seed: int = 0, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """Seeded random weights at the real shapes, generated on `device` (no CPU detour).

    Same (spec, seed, device type, dtype) gives the same weights on every rank. Linear weights and
    embeddings ~ N(0, 0.02^2); norm weights 1 + N(0, 0.1^2) and biases N(0, 0.02^2), so a wrongly
    wired norm or bias shows in the tests.
    """
    model = build_model(spec, device, dtype)
    gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
    for name, p in model.named_parameters():
        p.normal_(0.0, 0.02, generator=gen)
        if "norm" in name and name.endswith("weight"):
            p.mul_(5.0).add_(1.0)
    return model


def _weight_files(folder: str) -> list[str]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: not a readable index (a JSON object with a weight_map): "
                                  f"{type(e).__name__}: {e}") from None
        return [os.path.join(folder, n) for n in files]
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _our_key(hf_key: str, table: Mapping[str, str]) -> str | None:
    m = re.search(r"\.(\d+)\.", hf_key)
    if m is None:
        return table.get(hf_key)
    template = hf_key[:m.start()] + ".{}." + hf_key[m.end():]
    ours = table.get(template)
    return None if ours is None else ours.format(m.group(1))


@torch.no_grad()
def load_checkpoint(folder: str, spec: ModelSpec | None = None, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32) -> nn.Module:
    """The model of a Hugging Face checkpoint folder, weights cast to `dtype` on `device`."""
    from safetensors import SafetensorError

    spec = spec or ModelSpec.from_hf_config(folder)
    model = build_model(spec, device, dtype)
    params = dict(model.named_parameters())  # a tied head appears once, as tok_embeddings.weight
    table = key_table(spec)
    filled: dict[str, str] = {}
    for path in _weight_files(folder):
        if not os.path.exists(path):
            raise CheckpointError(f"{folder}: shard {os.path.basename(path)} is missing")
        try:
            _load_file(path, folder=folder, spec=spec, params=params, table=table, filled=filled, device=device)
        except SafetensorError as e:  # a damaged or truncated file: one line, not the library's traceback
            raise CheckpointError(f"{path}: not a readable safetensors file ({' '.join(str(e).split())})") from None
    reverse = {ours: hf for hf, ours in table.items()}
    for name in params:
        if name not in filled:
            hf = re.sub(r"\.(\d+)\.", lambda m: ".{}.", name, count=1)
            layer = re.search(r"\.(\d+)\.", name)
            hf_name = reverse.get(hf, name).format(layer.group(1) if layer else "")
            raise CheckpointError(f"{folder}: missing tensor {hf_name!r} (our {name!r})")
    return model


def _load_file(path: str, *, folder: str, spec: ModelSpec, params: dict, table: Mapping[str, str],
               filled: dict[str, str], device) -> None:
    """Copy the tensors of one safetensors file into ``params``, checking each key and shape."""
    from safetensors import safe_open

    tied_head = spec.tie_word_embeddings
    with safe_open(path, framework="pt", device=str(device)) as f:
        for hf_key in f.keys():
            ours = _our_key(hf_key, table)
            target = "tok_embeddings.weight" if tied_head and ours == "output.weight" else ours
            if target not in params:
                raise CheckpointError(f"{folder}: unexpected tensor {hf_key!r} for model {spec.name!r}")
            want = tuple(params[target].shape)
            got = tuple(f.get_slice(hf_key).get_shape())
            if got != want:
                raise CheckpointError(f"{folder}: tensor {hf_key!r} has shape {got}, expected {want}")
            if tied_head and ours == "output.weight":
                continue  # the tied head is the embedding, loaded from its own key
            if ours in filled:
                raise CheckpointError(f"{folder}: tensor {hf_key!r} appears twice (also as {filled[ours]!r})")
            params[ours].copy_(f.get_tensor(hf_key))
            filled[ours] = hf_key


def load_model(model: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               seed: int = 0) -> tuple[ModelSpec, nn.Module, str]:
    """`model` is a preset name (random weights), a path to a config.json (random weights at its
    shapes) or a checkpoint folder (its weights). Returns (spec, model, source) with source one of
    "preset", "config", "checkpoint"."""
    spec = ModelSpec.resolve(model)
    if os.path.isdir(model):
        return spec, load_checkpoint(model, spec, device, dtype), "checkpoint"
    source = "config" if os.path.exists(model) else "preset"
    return spec, random_model(spec, seed, device, dtype), source
