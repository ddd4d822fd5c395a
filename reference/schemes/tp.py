"""tp: Megatron-style tensor parallelism. Every rank runs all C tokens with 1/P of the attention
heads (its rows of Q/K/V, its columns of the output projection) and 1/P of the MLP (its rows of
gate/up or the first MLP matrix, its columns of the down projection); the output projection and the
down projection sum their partial products over the ranks (one all-reduce each per layer) before
the bias and the residual add. Norms, embedding and LM head are replicated. K/V heads are split with
the query heads that read them (replicated when nkv < P, as ``ulysses.head_shard``). Needs nh
divisible by P (checked before any communication). Rank 0 emits the first token; every rank keeps
all C tokens' K/V of its K/V heads.

How: ``shard_`` turns the single-device model of every rank (same seed or checkpoint) into this
rank's slices in place, once; the model code is unchanged. Messages: the (B, C, H) partial sums.
Reference: Shoeybi et al., "Megatron-LM" (2019); sim/schemes/tp.py.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reference.cuda_graphs import forget_graphs
from reference.kvcache import KVCache
from reference.schemes import check_supported
from reference.schemes.base import Prefill
from reference.schemes.ulysses import head_shard
from reference.transport import Transport


class Group:
    """The transport the row-parallel layers of one sharded model sum over (set by each prefill)."""

    def __init__(self, transport: Transport):
        self.transport = transport


class RowParallelLinear(nn.Module):
    """This rank's input columns of a Linear: x (..., in/P) -> the sum over the ranks of the partial
    products, then the full bias once (..., out)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group: Group):
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        self.group.transport.all_reduce(y)
        return y if self.bias is None else y + self.bias


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """A Linear holding (copies of) the given rows."""
    out = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype)
    out.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
    if bias is not None:
        out.bias = nn.Parameter(bias.contiguous(), requires_grad=False)
    return out


def _rows(linear: nn.Linear, rows: torch.Tensor) -> nn.Linear:
    return _linear(linear.weight[rows], None if linear.bias is None else linear.bias[rows])


def _columns(linear: nn.Linear, cols: torch.Tensor, group: Group) -> RowParallelLinear:
    return RowParallelLinear(linear.weight[:, cols], linear.bias, group)


def _head_rows(heads: range, hd: int) -> torch.Tensor:
    """Row indices of `heads` in a (heads * hd, ...) projection."""
    return torch.arange(heads.start * hd, heads.stop * hd)


def _shard_llama_layer(layer, qh: range, kh: range, inner: torch.Tensor, group: Group) -> None:
    att, ffn = layer.attention, layer.feed_forward
    q_rows, kv_rows = _head_rows(qh, att.hd), _head_rows(kh, att.hd)
    if att.wqkv is not None:  # fused: [q (nh hd) | k (nkv hd) | v (nkv hd)]
        q_off, v_off = att.nh * att.hd, (att.nh + att.nkv) * att.hd
        att.wqkv = _rows(att.wqkv, torch.cat([q_rows, q_off + kv_rows, v_off + kv_rows]))
    else:
        att.wq, att.wk, att.wv = _rows(att.wq, q_rows), _rows(att.wk, kv_rows), _rows(att.wv, kv_rows)
    att.wo = _columns(att.wo, q_rows, group)
    att.nh, att.nkv = len(qh), len(kh)
    if ffn.w13 is not None:  # fused: [gate (I) | up (I)]
        ffn.w13 = _rows(ffn.w13, torch.cat([inner, ffn.w13.weight.shape[0] // 2 + inner]))
    else:
        ffn.w1, ffn.w3 = _rows(ffn.w1, inner), _rows(ffn.w3, inner)
    ffn.w2 = _columns(ffn.w2, inner, group)


def _shard_falcon_layer(layer, qh: range, kh: range, inner: torch.Tensor, group: Group) -> None:
    att, mlp = layer.attention, layer.mlp
    g, hd = att.nh // att.nkv, att.hd
    # The fused QKV rows are grouped per K/V head: (nkv, g + 2, hd); keep this rank's groups, and in
    # them its query heads, then the group's K and V.
    q_first = qh.start - kh.start * g
    local_q = torch.arange(q_first, q_first + min(len(qh), g))
    rows = torch.cat([j * (g + 2) + torch.cat([local_q, torch.tensor([g, g + 1])]) for j in kh])
    att.wqkv = _rows(att.wqkv, (rows[:, None] * hd + torch.arange(hd)).flatten())
    att.wo = _columns(att.wo, _head_rows(qh, hd), group)
    att.nh, att.nkv = len(qh), len(kh)
    mlp.w1, mlp.w2 = _rows(mlp.w1, inner), _columns(mlp.w2, inner, group)


def shard_(model: nn.Module, transport: Transport) -> nn.Module:
    """Keep this rank's slices of every layer, in place (once; a later call only sets the
    transport). Query heads nh/P contiguous, their K/V heads, MLP columns ``tensor_split`` order."""
    r, p = transport.rank, transport.world_size
    done = model.__dict__.get("_tp_shard")
    if done is not None:
        assert done[:2] == (r, p), (done[:2], (r, p))
        done[2].transport = transport
        return model
    spec, group = model.spec, Group(transport)
    qh, kh = head_shard(spec.num_heads, spec.num_kv_heads, p, r)
    inner = torch.tensor_split(torch.arange(spec.intermediate_size), p)[r]
    shard_layer = _shard_llama_layer if spec.family == "llama" else _shard_falcon_layer
    for layer in model.layers:
        shard_layer(layer, qh, kh, inner, group)
    model.graphable = False  # the all-reduces run inside ``post``
    forget_graphs(model)
    model.__dict__["_tp_shard"] = (r, p, group)
    return model


@torch.no_grad()
def prefill(model: torch.nn.Module, input_ids: torch.Tensor, chunks: Sequence[int], transport: Transport) -> Prefill:
    """input_ids (B, C) -> the last position's logits (B, V) (on every rank; rank 0's give the
    first token) and the cache of all C tokens for this rank's K/V heads."""
    spec = model.spec
    check_supported("tp", spec, context=input_ids.shape[1], world_size=transport.world_size)
    shard_(model, transport)
    cache = KVCache(spec.num_layers)
    logits = model(input_ids, 0, cache)
    return Prefill(logits, cache.finish())
