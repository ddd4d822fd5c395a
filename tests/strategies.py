"""Hypothesis strategies shared by the tests (simulator and runtime)."""
from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def partitions(draw, total: int, parts: int):
    """A random partition of `total` tokens into `parts` chunks, every chunk >= 1."""
    assert 1 <= parts <= total
    if parts == 1:  # no cut to draw (and st.integers(1, 0) would be empty when total is 1)
        return [total]
    cuts = sorted(draw(st.sets(st.integers(1, total - 1), min_size=parts - 1, max_size=parts - 1)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds, bounds[1:])]


# ----- runtime (reference/) ------------------------------------------------------------------------
LAYOUTS = ("llama", "falcon-7b", "falcon-40b", "falcon-sequential")


@st.composite
def tiny_model_specs(draw, layouts=LAYOUTS):
    """A random tiny ModelSpec: Llama (MHA, GQA, MQA) or Falcon (7B layout: one LayerNorm, parallel;
    40B layout: two LayerNorms, parallel; the old sequential layout), 1 to 3 layers, small sizes."""
    from sim.model import ModelSpec

    layout = draw(st.sampled_from(layouts))
    nkv = draw(st.sampled_from([1, 2, 4]))
    nh = nkv * draw(st.sampled_from([1, 2, 4]))  # group 1: MHA; nkv 1: MQA
    hd = draw(st.sampled_from([4, 8, 16]))
    base = {"llama": "tiny-llama", "falcon-7b": "tiny-falcon"}.get(layout, "tiny-falcon-40b")
    changes = dict(
        name=f"random-{layout}", num_layers=draw(st.integers(1, 3)), num_heads=nh, num_kv_heads=nkv,
        head_dim=hd, hidden_size=draw(st.sampled_from([16, 32, 48])),
        intermediate_size=draw(st.sampled_from([24, 64])), vocab_size=draw(st.integers(8, 80)),
        rope_theta=draw(st.sampled_from([10000.0, 500000.0])),
        tie_word_embeddings=draw(st.booleans()))
    if layout != "llama":
        changes["bias"] = draw(st.booleans())
    if layout == "falcon-sequential":
        changes["parallel_attn"] = False
    return ModelSpec.preset(base).replace(**changes)


def supported_worlds(scheme: str, spec, lo: int, hi: int, context: int) -> list[int]:
    """World sizes in lo..hi that `scheme` runs `spec` on (``reference.schemes.check_supported``)."""
    from reference.schemes import PartitionError, check_supported

    def ok(world: int) -> bool:
        try:
            check_supported(scheme, spec, context=context, world_size=world)
        except PartitionError:
            return False
        return True
    return [w for w in range(lo, hi + 1) if ok(w)]


@st.composite
def prefill_examples(draw, scheme: str, max_world: int = 4, max_context: int = 64, min_world: int = 1):
    """A prefill example: spec, weight seed, world size min_world..max_world that the scheme runs the
    spec on, a partition of C tokens (random for kvr, else the scheme's layout,
    ``reference.schemes.layout_chunks``; world <= C, 2 world <= C for ring-zigzag), random token
    ids, whether the model runs with fused GEMMs (``fuse_()``), and for pipeline its piece count."""
    from reference.schemes import layout_chunks

    spec = draw(tiny_model_specs().filter(
        lambda s: supported_worlds(scheme, s, min_world, max_world, max_context)))
    world = draw(st.sampled_from(supported_worlds(scheme, spec, min_world, max_world, max_context)))
    context = draw(st.integers(2 * world if scheme == "ring-zigzag" else world, max_context))
    if scheme == "kvr":
        chunks = draw(partitions(context, world))
    else:
        chunks = layout_chunks(scheme, context=context, world_size=world)
    ids = draw(st.lists(st.integers(0, spec.vocab_size - 1), min_size=context, max_size=context))
    example = {"spec": spec.to_dict(), "seed": draw(st.integers(0, 2**16)), "scheme": scheme,
               "chunks": chunks, "ids": ids, "fuse": draw(st.booleans())}
    if scheme == "pipeline":
        example["pieces"] = draw(st.sampled_from([0, 1, 2, 5, 64]))  # 0: four a stage
    return example


# ----- simulator (sim/) ----------------------------------------------------------------------------
@st.composite
def sim_models(draw):
    """A random ModelSpec of the Llama or Falcon layouts, 1 to 3 layers, small to 7B-like widths (so
    that both compute- and launch-bound ops occur)."""
    from sim.model import ModelSpec

    base = ModelSpec.preset(draw(st.sampled_from(["llama-2-7b", "llama-3-8b", "falcon-7b", "falcon-40b"])))
    nkv = draw(st.sampled_from([1, 2, 8]))
    nh = nkv * draw(st.sampled_from([1, 4]))
    hd = draw(st.sampled_from([64, 128]))
    return base.replace(name="random", num_layers=draw(st.integers(1, 3)), num_heads=nh, num_kv_heads=nkv,
                        head_dim=hd, hidden_size=nh * hd, intermediate_size=draw(st.sampled_from([256, 4096])),
                        vocab_size=draw(st.sampled_from([1000, 32000])))


@st.composite
def mesh_clusters(draw, num_gpus: int, background: bool = True):
    """A full mesh of ``num_gpus`` GPUs, one latency for every link (so every route is the direct link),
    each directed link at its own bandwidth (1 to 400 GB/s); optionally constant background flows."""
    from sim.cluster import BackgroundFlow, ClusterSpec, LinkSpec

    latency_s = draw(st.sampled_from([0.0, 2e-6, 2e-5]))
    pairs = [(a, b) for a in range(num_gpus) for b in range(num_gpus) if a != b]
    links = tuple(LinkSpec(src=a, dst=b, latency_s=latency_s,
                           bandwidth_bytes_per_s=draw(st.floats(1e9, 4e11)))
                  for a, b in pairs)
    flows = ()
    if background and pairs:
        chosen = draw(st.lists(st.sampled_from(pairs), max_size=3, unique=True))
        flows = tuple(BackgroundFlow(src=a, dst=b, flows=draw(st.integers(1, 3))) for a, b in chosen)
    return ClusterSpec(name="random", num_gpus=num_gpus, links=links, background=flows)


@st.composite
def noise_specs(draw, seeds: int = 3):
    """A cluster's noise (``sim.cluster.NoiseSpec``) on the links a job uses: 0-2 flows, on/off periods
    of 5-200 us or constant, any rate and latency jitter."""
    from sim.cluster import NoiseSpec

    periodic = draw(st.booleans())
    return NoiseSpec(seeds=seeds, flows=draw(st.integers(0, 2)),
                     on_s=draw(st.floats(5e-6, 2e-4)) if periodic else None,
                     off_s=draw(st.floats(5e-6, 2e-4)) if periodic else None,
                     rate_jitter=draw(st.floats(0.0, 1.0)), latency_jitter_s=draw(st.sampled_from([0.0, 1e-6, 2e-5])))


# ----- NCCL's model (sim/engine/nccl.py) -------------------------------------------------------------
@st.composite
def nccl_comms(draw):
    """A random communicator for NCCL's tuning model: 2-64 ranks on one node or several, a transport,
    a hop bandwidth of 1-900 GB/s, a GPU generation."""
    from sim.engine.nccl import ARCHS, Comm

    ranks = draw(st.integers(2, 64))
    nodes = draw(st.sampled_from([n for n in (1, 2, 4, 8, ranks) if n <= ranks and ranks % n == 0]))
    transport = draw(st.sampled_from(["nvlink", "pci"] + (["net"] if nodes > 1 else [])))
    return Comm(ranks=ranks, nodes=nodes, transport=transport, arch=draw(st.sampled_from(ARCHS)),
                bandwidth_bytes_per_s=draw(st.floats(1e9, 900e9)))
