"""ModelSpec: the architecture shapes of a causal decoder LLM, torch-free.

Both halves of the project read it: the simulator's cost model (``sim/cost/``) and the PyTorch
runtime (``reference/``) that builds the same architecture. It comes from a preset name or from a
Hugging Face ``config.json`` (Llama: ``LlamaForCausalLM``; Falcon: ``FalconForCausalLM``, both the
Falcon-7B layout and the Falcon-40B ``new_decoder_architecture`` layout).

References: Hugging Face ``LlamaConfig`` and ``FalconConfig``; the architecture table in
``shared/docs/kv-runahead.md``.

Shape legend used across the project:
    L  layers            H  hidden size          nh  query heads      nkv  KV heads
    hd head dim          I  MLP inner size       V   vocabulary       C    context tokens
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any, Mapping

DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


class ModelSpecError(ValueError):
    """Bad model input: an unknown preset, an unsupported or inconsistent config."""


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Architecture shapes. Derived sizes are properties; ``__post_init__`` only validates."""

    name: str
    family: str  # "llama" | "falcon"
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int  # MLP inner size
    mlp_kind: str  # "swiglu" (gate, up, down) | "gelu" (up, down)
    norm_kind: str  # "rmsnorm" | "layernorm"
    parallel_attn: bool  # attention and MLP read the same normed input and are summed
    num_ln_per_layer: int  # 2 for Llama and Falcon-40B style; 1 for Falcon-7B style
    rope_theta: float
    vocab_size: int
    norm_eps: float
    bias: bool = False  # linear layers carry biases (Falcon "bias": true)
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ModelSpecError(f"model {self.name!r}: {msg}")

        need(self.family in ("llama", "falcon"), f"family={self.family!r} is not 'llama' or 'falcon'")
        need(self.mlp_kind in ("swiglu", "gelu"), f"mlp_kind={self.mlp_kind!r} is not 'swiglu' or 'gelu'")
        need(self.norm_kind in ("rmsnorm", "layernorm"),
             f"norm_kind={self.norm_kind!r} is not 'rmsnorm' or 'layernorm'")
        for field in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                      "intermediate_size", "vocab_size"):
            v = getattr(self, field)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                 f"{field}={v!r} must be a positive integer")
        need(self.num_heads % self.num_kv_heads == 0,
             f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        need(self.head_dim % 2 == 0, f"head_dim={self.head_dim} must be even for rotary embeddings")
        need(self.num_ln_per_layer in (1, 2), f"num_ln_per_layer={self.num_ln_per_layer} is not 1 or 2")
        need(not (self.num_ln_per_layer == 1 and not self.parallel_attn),
             "num_ln_per_layer=1 needs parallel_attn=True (one norm feeds both attention and MLP)")
        need(self.rope_theta > 0, f"rope_theta={self.rope_theta} must be > 0")
        need(self.norm_eps > 0, f"norm_eps={self.norm_eps} must be > 0")

    # ----- derived sizes -------------------------------------------------------------------------
    @property
    def q_size(self) -> int:
        """Width of the query projection: nh * hd."""
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        """Width of the key (or value) projection: nkv * hd."""
        return self.num_kv_heads * self.head_dim

    @property
    def group_size(self) -> int:
        """Query heads per KV head (1 = MHA, nh = MQA)."""
        return self.num_heads // self.num_kv_heads

    def kv_bytes_per_token_per_layer(self, dtype: str) -> int:
        """Bytes of K and V for one token in one layer: 2 * nkv * hd * dtype bytes."""
        return 2 * self.kv_size * dtype_bytes(dtype)

    @property
    def params_per_layer(self) -> int:
        """Weights of one decoder layer (linear weights, biases and norm parameters)."""
        h = self.hidden_size
        attn = h * (self.q_size + 2 * self.kv_size) + self.q_size * h
        n_mlp = 3 if self.mlp_kind == "swiglu" else 2
        mlp = n_mlp * h * self.intermediate_size
        bias = 0
        if self.bias:
            bias = self.q_size + 2 * self.kv_size + h + (
                2 * self.intermediate_size + h if self.mlp_kind == "swiglu" else self.intermediate_size + h)
        norm_params = h if self.norm_kind == "rmsnorm" else 2 * h
        return attn + mlp + bias + self.num_ln_per_layer * norm_params

    @property
    def num_params(self) -> int:
        """All weights: embedding, layers, final norm, LM head (once if tied)."""
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else emb
        final_norm = self.hidden_size if self.norm_kind == "rmsnorm" else 2 * self.hidden_size
        return emb + self.num_layers * self.params_per_layer + final_norm + head

    @property
    def linear_flops_per_token(self) -> int:
        """Matmul FLOPs of all decoder layers for one token: 2 x (linear weights per layer) x L.

        Linear weights per layer: H*(q + 2kv) + q*H (QKV and output projections) plus 2 or 3 x H*I (MLP).
        """
        h = self.hidden_size
        n_mlp = 3 if self.mlp_kind == "swiglu" else 2
        weights = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + n_mlp * h * self.intermediate_size
        return 2 * weights * self.num_layers

    def attention_flops(self, queries: int, past: int = 0) -> float:
        """FLOPs of causal attention over all layers for `queries` new tokens after `past` cached ones.

        Each (query, key) pair costs 4*hd FLOPs per query head (QK^T and PV); causal attention counts
        only the pairs the mask keeps: queries*past + queries*(queries+1)/2 ("half the square").
        """
        pairs = queries * past + queries * (queries + 1) / 2
        return 4.0 * pairs * self.head_dim * self.num_heads * self.num_layers

    def prefill_flops(self, context: int) -> float:
        """FLOPs of one prefill of `context` tokens: linear layers, causal attention, LM head on the
        last token only (embedding lookups, norms and rotary are not counted)."""
        return (context * self.linear_flops_per_token + self.attention_flops(context)
                + 2 * self.hidden_size * self.vocab_size)

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ModelSpecError(f"model spec: unknown keys {unknown}")
        try:
            return cls(**d)
        except TypeError as e:
            raise ModelSpecError(f"model spec: {e}") from None

    # ----- named constructors --------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "ModelSpec":
        """A named architecture (see ``PRESETS``)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ModelSpecError(
                f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None

    @classmethod
    def from_hf_config(cls, path_or_dict: str | os.PathLike | Mapping[str, Any],
                       name: str | None = None) -> "ModelSpec":
        """From a Hugging Face ``config.json`` (a path to the file or to its folder, or the parsed dict)."""
        if isinstance(path_or_dict, Mapping):
            cfg = dict(path_or_dict)
            src = name or cfg.get("_name_or_path") or "config"
        else:
            path = os.fspath(path_or_dict)
            if os.path.isdir(path):
                path = os.path.join(path, "config.json")
            try:
                with open(path, encoding="utf-8") as f:
                    cfg = json.load(f)
            except FileNotFoundError:
                raise ModelSpecError(f"no config.json at {path}") from None
            except json.JSONDecodeError as e:
                raise ModelSpecError(f"{path}: not valid JSON ({e})") from None
            src = name or os.path.basename(os.path.dirname(os.path.abspath(path))) or path
        model_type = cfg.get("model_type")
        if model_type == "llama":
            return _from_llama_config(cfg, src)
        if model_type in ("falcon", "RefinedWeb", "RefinedWebModel"):
            return _from_falcon_config(cfg, src)
        raise ModelSpecError(f"{src}: model_type={model_type!r} is not supported (llama, falcon)")

    @classmethod
    def resolve(cls, name_or_path: str) -> "ModelSpec":
        """A preset name, or a path to a checkpoint folder / ``config.json``."""
        if name_or_path in PRESETS:
            return PRESETS[name_or_path]
        if os.path.exists(name_or_path):
            return cls.from_hf_config(name_or_path)
        raise ModelSpecError(
            f"{name_or_path!r} is neither a model preset ({', '.join(sorted(PRESETS))}) "
            "nor an existing config.json or checkpoint folder")


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ModelSpecError(f"dtype={dtype!r} is not one of {sorted(DTYPE_BYTES)}") from None


def _get(cfg: Mapping[str, Any], src: str, *keys: str, default: Any = ...) -> Any:
    for k in keys:
        if k in cfg and cfg[k] is not None:
            return cfg[k]
    if default is ...:
        raise ModelSpecError(f"{src}: config.json lacks {' / '.join(keys)}")
    return default


def _rope_theta(cfg: Mapping[str, Any], src: str) -> float:
    scaling = cfg.get("rope_scaling")
    if scaling not in (None, {}) and not (isinstance(scaling, Mapping)
                                          and scaling.get("rope_type", scaling.get("type")) == "default"):
        raise ModelSpecError(f"{src}: rope_scaling={scaling!r} is not supported")
    params = cfg.get("rope_parameters")  # transformers >= 5 nests rope_theta here
    if isinstance(params, Mapping):
        if params.get("rope_type", "default") != "default":
            raise ModelSpecError(f"{src}: rope_parameters={dict(params)!r} is not supported")
        if "rope_theta" in params:
            return float(params["rope_theta"])
    return float(_get(cfg, src, "rope_theta", default=10000.0))


def _from_llama_config(cfg: Mapping[str, Any], src: str) -> ModelSpec:
    hidden = int(_get(cfg, src, "hidden_size"))
    nh = int(_get(cfg, src, "num_attention_heads"))
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ModelSpecError(f"{src}: attention_bias / mlp_bias are not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ModelSpecError(f"{src}: hidden_act={act!r} is not supported (silu)")
    head_dim = cfg.get("head_dim") or hidden // nh
    return ModelSpec(
        name=src, family="llama",
        num_layers=int(_get(cfg, src, "num_hidden_layers")),
        hidden_size=hidden, num_heads=nh,
        num_kv_heads=int(_get(cfg, src, "num_key_value_heads", default=nh)),
        head_dim=int(head_dim),
        intermediate_size=int(_get(cfg, src, "intermediate_size")),
        mlp_kind="swiglu", norm_kind="rmsnorm", parallel_attn=False, num_ln_per_layer=2,
        rope_theta=_rope_theta(cfg, src),
        vocab_size=int(_get(cfg, src, "vocab_size")),
        norm_eps=float(_get(cfg, src, "rms_norm_eps", default=1e-6)),
        bias=False,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _from_falcon_config(cfg: Mapping[str, Any], src: str) -> ModelSpec:
    if cfg.get("alibi"):
        raise ModelSpecError(f"{src}: alibi=true is not supported (rotary Falcon only)")
    hidden = int(_get(cfg, src, "hidden_size", "n_embed"))
    nh = int(_get(cfg, src, "num_attention_heads", "n_head"))
    new_arch = bool(cfg.get("new_decoder_architecture", False))
    if new_arch:
        nkv = int(_get(cfg, src, "num_kv_heads", "n_head_kv", default=nh))
        n_ln = cfg.get("num_ln_in_parallel_attn")
        n_ln = 2 if n_ln is None else int(n_ln)
        parallel = True
    else:
        nkv = 1 if cfg.get("multi_query", True) else nh
        parallel = bool(cfg.get("parallel_attn", True))
        n_ln = 1 if parallel else 2
    if cfg.get("activation", "gelu") != "gelu":
        raise ModelSpecError(f"{src}: activation={cfg.get('activation')!r} is not supported (gelu)")
    head_dim = cfg.get("head_dim") or hidden // nh
    return ModelSpec(
        name=src, family="falcon",
        num_layers=int(_get(cfg, src, "num_hidden_layers", "n_layer")),
        hidden_size=hidden, num_heads=nh, num_kv_heads=nkv, head_dim=int(head_dim),
        intermediate_size=int(_get(cfg, src, "ffn_hidden_size", default=4 * hidden)),
        mlp_kind="gelu", norm_kind="layernorm", parallel_attn=parallel, num_ln_per_layer=n_ln,
        rope_theta=_rope_theta(cfg, src),
        vocab_size=int(_get(cfg, src, "vocab_size")),
        norm_eps=float(_get(cfg, src, "layer_norm_epsilon", default=1e-5)),
        bias=bool(cfg.get("bias", False)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)),
    )


def _llama(name: str, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int,
           theta: float = 10000.0, eps: float = 1e-5) -> ModelSpec:
    return ModelSpec(name=name, family="llama", num_layers=layers, hidden_size=hidden,
                     num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                     intermediate_size=inter, mlp_kind="swiglu", norm_kind="rmsnorm",
                     parallel_attn=False, num_ln_per_layer=2, rope_theta=theta, vocab_size=vocab,
                     norm_eps=eps)


def _falcon(name: str, layers: int, hidden: int, heads: int, kv: int, vocab: int,
            new_arch: bool) -> ModelSpec:
    return ModelSpec(name=name, family="falcon", num_layers=layers, hidden_size=hidden,
                     num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                     intermediate_size=4 * hidden, mlp_kind="gelu", norm_kind="layernorm",
                     parallel_attn=True, num_ln_per_layer=2 if new_arch else 1,
                     rope_theta=10000.0, vocab_size=vocab, norm_eps=1e-5, bias=False,
                     tie_word_embeddings=True)


PRESETS: dict[str, ModelSpec] = {s.name: s for s in (
    _llama("llama-2-7b", 32, 4096, 32, 32, 11008, 32000),
    _llama("llama-2-13b", 40, 5120, 40, 40, 13824, 32000),
    _llama("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, theta=500000.0),
    # Hugging Face config.json of meta-llama/Meta-Llama-3-70B and meta-llama/Llama-3.1-405B (shapes;
    # the 3.1 rope scaling changes no shape).
    _llama("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, theta=500000.0),
    _llama("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256, theta=500000.0),
    _falcon("falcon-7b", 32, 4544, 71, 1, 65024, new_arch=False),
    _falcon("falcon-40b", 60, 8192, 128, 8, 65024, new_arch=True),
    # Tiny variants for tests: same layouts, toy sizes.
    _llama("tiny-llama", 2, 64, 4, 4, 128, 256),            # MHA
    _llama("tiny-llama-gqa", 2, 64, 4, 2, 128, 256, theta=500000.0),
    _falcon("tiny-falcon", 2, 64, 4, 1, 256, new_arch=False),   # MQA, one LayerNorm
    _falcon("tiny-falcon-40b", 2, 64, 4, 2, 256, new_arch=True),  # GQA, two LayerNorms
)}
