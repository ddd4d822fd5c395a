"""Multi-node clusters from presets: nodes of GPUs on NVSwitch (or PCIe) joined by a fabric.

``sim/data/nodes.csv`` (DGX A100, DGX H100, HGX H200, a PCIe server) and ``sim/data/fabrics.csv``
(InfiniBand HDR and NDR, RoCE at 400 GbE) hold the figures with their sources. The topology, as
links between GPUs and switches:

- inside node n: every GPU to the node's switch ``nN`` and back at the node's per-GPU bandwidth, half
  the intra-node latency a hop;
- ``rail`` NICs (one a GPU, rail-optimised): GPU l of every node to leaf ``railL`` at the NIC's
  bandwidth, half the fabric's latency a hop; the leaves join at ``spine`` with links of (nodes x NIC)
  / oversubscription. A flow between nodes leaves by its own GPU's NIC or, where that is faster,
  crosses its node's switch to the GPU on the destination's rail (NCCL's PXN);
- ``shared`` NICs: the node's switch to ``spine`` at (NICs a node x NIC) / oversubscription.

GPUs are numbered node by node (node n holds GPUs n*k .. n*k+k-1), so a tensor-parallel group of
consecutive GPUs stays in one node.
"""
from __future__ import annotations

from .cluster import LinkSpec, duplex
from .hardware import read_table

NODES = {r["name"]: r for r in read_table("nodes")}
FABRICS = {r["name"]: r for r in read_table("fabrics")}
GB, US = 1e9, 1e-6


def links(*, nodes: int, node: str, fabric: str, nics: str = "rail",
          oversubscription: float = 1.0) -> tuple[int, tuple[str, ...], tuple[LinkSpec, ...]]:
    """(GPUs, switches, links) of ``nodes`` nodes of preset ``node`` on preset ``fabric``."""
    n, f = NODES[node], FABRICS[fabric]
    k = int(n["gpus_per_node"])
    intra_bw, intra_lat = float(n["intra_gb_per_s"]) * GB, float(n["intra_latency_us"]) * US / 2
    nic_bw, nic_lat = float(f["nic_gb_per_s"]) * GB, float(f["latency_us"]) * US / 2
    switches, out = [f"n{i}" for i in range(nodes)], []
    for i in range(nodes):
        for g in range(i * k, (i + 1) * k):
            out += duplex(g, f"n{i}", intra_bw, intra_lat)
    if nodes > 1:
        switches.append("spine")
        if nics == "rail":
            for rail in range(k):
                switches.append(f"rail{rail}")
                for i in range(nodes):
                    out += duplex(i * k + rail, f"rail{rail}", nic_bw, nic_lat)
                out += duplex(f"rail{rail}", "spine", nodes * nic_bw / oversubscription, nic_lat)
        else:
            per_node = int(n["nics_per_node"]) * nic_bw / oversubscription
            for i in range(nodes):
                out += duplex(f"n{i}", "spine", per_node, nic_lat)
    return nodes * k, tuple(switches), tuple(out)
