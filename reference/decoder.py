"""What Llama and Falcon share: a decoder layer in two halves around its attention, and the model's
forward pass (embedding, layers, final norm and LM head).

A layer is ``pre`` (input norm(s), the QKV projection, rotary on Q and K), then the KV-cache hook
(``cache.attend``: by default ``cache.update`` and the attention; where the parallel schemes
communicate), then ``post`` (output projection, MLP, residual adds). ``pre`` and ``post`` touch no cache and no other rank, so on CUDA
they can be replayed as CUDA graphs (``reference/cuda_graphs.py``) while the cache hook and the
attention, whose shapes depend on the past, run as they are. The split is also the simulator's:
``pre_attention``, ``kv_copy``, ``attention``, ``post_attention`` (docs/cost_model.md).

Shapes: B batch, T tokens of this call, S tokens in the cache after it, H hidden, nh query heads,
nkv KV heads, hd head dim, V vocabulary.
"""
from __future__ import annotations

import torch
from torch import nn

from reference.kvcache import KVCache
from reference.layers import rotary_cos_sin


class DecoderBlock(nn.Module):
    """A decoder layer; subclasses define ``pre`` and ``post``."""

    layer_idx: int

    def pre(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """x (B, T, H) -> (q (B, nh, T, hd), k, v (B, nkv, T, hd), *extra): rotated Q and K, V, and
        whatever ``post`` needs besides x and the attention output (tensors only)."""
        raise NotImplementedError

    def post(self, x: torch.Tensor, y: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
        """The layer input x (B, T, H) and attention output y (B, nh, T, hd) -> the layer output."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: KVCache) -> torch.Tensor:
        q, k, v, *extra = self.pre(x, cos, sin)
        return self.post(x, cache.attend(self.layer_idx, q, k, v), *extra)  # y (B, nh, T, hd)


def merge_heads(y: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hd) -> (B, T, nh * hd), the output projection's input."""
    b, nh, t, hd = y.shape
    return y.transpose(1, 2).reshape(b, t, nh * hd)


class DecoderLM(nn.Module):
    """Embedding, ``layers`` (DecoderBlocks), final ``norm`` and ``output`` head; subclasses build them."""

    spec: "object"
    tok_embeddings: nn.Embedding
    layers: nn.ModuleList
    norm: nn.Module
    output: nn.Linear

    graphable = True  # False: never CUDA graphs (tensor parallelism communicates inside ``post``)

    def hidden(self, input_ids: torch.Tensor, start_pos: int | torch.Tensor, cache: KVCache) -> torch.Tensor:
        """input_ids (B, T) at positions start_pos .. start_pos + T - 1 -> last layer's output (B, T, H).
        `start_pos` may also be the (T,) absolute positions themselves (ring-zigzag's two pieces).

        On CUDA, chunks of at most ``reference.cuda_graphs.max_tokens()`` tokens run every layer's
        ``pre`` and ``post`` as CUDA graphs (one launch each instead of a dozen kernels and the Python
        around them); the results are the same as the eager path's."""
        return self.run_layers(self.tok_embeddings(input_ids), start_pos, cache)

    def run_layers(self, x: torch.Tensor, start_pos: int | torch.Tensor, cache: KVCache, *,
                   layers: range | None = None) -> torch.Tensor:
        """Hidden states x (B, T, H) through ``layers`` (default all; a pipeline stage runs its
        own) -> their output (B, T, H). Where CUDA graphs apply, the output is the graphs' static
        tensor, overwritten by the next run over the same layers and shape: a caller that keeps it
        past that (a pipeline stage's asynchronous send) clones it."""
        from reference.cuda_graphs import layer_graphs

        cos, sin = rotary_cos_sin(start_pos, x.shape[1], head_dim=self.spec.head_dim,
                                  theta=self.spec.rope_theta, dtype=x.dtype, device=x.device)
        graphs = layer_graphs(self, x, cos, sin, layers) if self.graphable else None
        if graphs is not None:
            return graphs.run(x, cos, sin, cache)
        if layers is None:
            layers = range(len(self.layers))
        for i in layers:
            x = self.layers[i](x, cos, sin, cache)
        return x

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Last layer's output (B, T, H) -> the last position's logits (B, V)."""
        return self.output(self.norm(x[:, -1]))

    def forward(self, input_ids: torch.Tensor, start_pos: int | torch.Tensor, cache: KVCache) -> torch.Tensor:
        """input_ids (B, T) at positions start_pos .. start_pos + T - 1 -> last position's logits (B, V)."""
        return self.head(self.hidden(input_ids, start_pos, cache))
