"""A real multi-process cluster on one machine: each rank in its own network namespace, every directed
pair of ranks (i -> j) on its own shaped link, so gloo traffic between ranks really crosses the links.

Topology: one hub namespace holds a Linux bridge; rank namespace r has one veth ``eth0`` with address
10.213.0.(r+1)/24 whose peer ``r<r>`` sits on the bridge. Every veth is created inside a namespace we
created, so the root namespace never sees our interfaces and deleting the namespaces removes them all.
Shaping is applied at the sender: rank i's ``eth0`` has an ``htb`` root with one class per destination
rank j (rate = link (i, j)'s bandwidth, a ``u32`` filter on the destination address), and under it a
``netem`` delay of link (i, j)'s latency where the kernel has netem (see docs/netcluster.md for what
happens without it). Unmatched traffic (ARP, links given an infinite bandwidth) bypasses shaping.

Pieces: ``cluster`` (``ShapedCluster``: set-up, ``run``, tear-down), ``links`` (LinkSpec, NoiseFlow,
units, ``scale_links``), ``net`` (namespaces, tc commands, cleanup), ``noise`` (competing flows),
``probe`` (what the links deliver to gloo), ``__main__`` (``python -m reference.netcluster``).
docs/netcluster.md.

References: tc-htb(8), tc-netem(8), ip-netns(8); torch.distributed env:// initialisation.
"""
from reference.netcluster.cluster import RankResult, ShapedCluster
from reference.netcluster.links import (LinksArg, LinkSpec, NetClusterError, Nodes, NoiseFlow, from_cluster_spec,
                                        link_matrix, parse_bandwidth, parse_duration, scale_links)
from reference.netcluster.net import cleanup_stale, namespaces_available, netem_available, our_namespaces

__all__ = ["LinkSpec", "LinksArg", "NetClusterError", "Nodes", "NoiseFlow", "RankResult", "ShapedCluster", "cleanup_stale",
           "from_cluster_spec", "link_matrix", "namespaces_available", "netem_available", "our_namespaces",
           "parse_bandwidth", "parse_duration", "scale_links"]
