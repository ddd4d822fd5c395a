"""Our checkpoint loader and models against transformers (the oracle) on tiny random checkpoints
written with ``save_pretrained``: the same last-position logits in fp32 (max abs diff <= 1e-5), for
GQA Llama and both Falcon layouts, from one file and from shards. Also: the loader's errors, and
ModelSpec.from_hf_config on the saved config.json files."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from reference.checkpoint import CheckpointError, load_checkpoint, random_model
from reference.kvcache import KVCache
from sim.model import ModelSpec

transformers = pytest.importorskip("transformers")

CONFIGS = {
    "llama-gqa": lambda: transformers.LlamaConfig(
        vocab_size=96, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, rope_theta=500000.0, rms_norm_eps=1e-5),
    "falcon-7b": lambda: transformers.FalconConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        new_decoder_architecture=False, multi_query=True, parallel_attn=True, bias=False),
    "falcon-40b": lambda: transformers.FalconConfig(
        vocab_size=96, hidden_size=64, num_hidden_layers=2, num_attention_heads=8, num_kv_heads=2,
        new_decoder_architecture=True, bias=True),
}


def save_hf(kind: str, folder, shard: bool = False):
    """A tiny random HF model of `kind`, saved to `folder`; returns the model (eval, fp32)."""
    torch.manual_seed(0)
    cfg = CONFIGS[kind]()
    cls = transformers.LlamaForCausalLM if kind.startswith("llama") else transformers.FalconForCausalLM
    hf = cls(cfg).eval()
    with torch.no_grad():  # HF initialises norms to 1 and biases to 0; perturb so their wiring shows
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(folder, max_shard_size="40KB" if shard else "10GB")
    return hf


@pytest.mark.parametrize("kind, shard", [("llama-gqa", False), ("llama-gqa", True), ("falcon-7b", False),
                                         ("falcon-40b", False), ("falcon-40b", True)])
def test_logits_match_transformers(tmp_path, kind, shard):
    hf = save_hf(kind, tmp_path, shard)
    assert os.path.exists(tmp_path / "model.safetensors.index.json") == shard
    model = load_checkpoint(str(tmp_path))
    ids = torch.randint(0, 96, (1, 13), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits[:, -1]
        got = model(ids, 0, KVCache(model.spec.num_layers))
    assert (got - want).abs().max().item() <= 1e-5


def test_spec_from_saved_configs(tmp_path):
    got = {}
    for kind in CONFIGS:
        save_hf(kind, tmp_path / kind)
        s = ModelSpec.from_hf_config(tmp_path / kind / "config.json")
        got[kind] = (s.family, s.num_layers, s.hidden_size, s.num_heads, s.num_kv_heads, s.head_dim,
                     s.intermediate_size, s.vocab_size, s.num_ln_per_layer, s.parallel_attn, s.bias,
                     s.rope_theta)
    assert got == {
        "llama-gqa": ("llama", 2, 64, 8, 2, 8, 80, 96, 2, False, False, 500000.0),
        "falcon-7b": ("falcon", 2, 64, 4, 1, 16, 256, 96, 1, True, False, 10000.0),
        "falcon-40b": ("falcon", 2, 64, 8, 2, 8, 256, 96, 2, True, True, 10000.0),
    }


def _rewrite(folder, edit):
    path = folder / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(tmp_path):
    save_hf("llama-gqa", tmp_path)
    _rewrite(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_checkpoint(str(tmp_path))


def test_wrong_shape_is_named(tmp_path):
    save_hf("falcon-40b", tmp_path)
    key = "transformer.h.0.self_attention.query_key_value.weight"
    _rewrite(tmp_path, lambda t: t.__setitem__(key, t[key][:-8]))
    with pytest.raises(CheckpointError, match=r"tensor '.*query_key_value\.weight' has shape \(88, 64\), expected \(96, 64\)"):
        load_checkpoint(str(tmp_path))


def test_unexpected_tensor_is_named(tmp_path):
    save_hf("falcon-7b", tmp_path)
    _rewrite(tmp_path, lambda t: t.__setitem__("transformer.h.0.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'transformer\.h\.0\.extra\.weight'"):
        load_checkpoint(str(tmp_path))


def test_folder_without_weights(tmp_path):
    save_hf("falcon-7b", tmp_path)
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(str(tmp_path))


def test_random_weights_are_seeded_and_in_dtype():
    spec = ModelSpec.preset("tiny-falcon-40b")
    a, b = random_model(spec, 3, dtype=torch.bfloat16), random_model(spec, 3, dtype=torch.bfloat16)
    c = random_model(spec, 4, dtype=torch.bfloat16)
    pa, pb, pc = (dict(m.named_parameters()) for m in (a, b, c))
    assert all(p.dtype == torch.bfloat16 for p in pa.values())
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not torch.equal(pa["layers.0.attention.wqkv.weight"], pc["layers.0.attention.wqkv.weight"])
    assert sum(p.numel() for p in pa.values()) == spec.num_params
