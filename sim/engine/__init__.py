"""The engine: SimPy processes for the ranks of one job under a given plan (``core.run``), the links
they share (``network.py``), their collectives (``collectives.py``), and the variant whose ranks are
processes sharing a CPU's cores over gloo (``cpu_cluster.py``). docs/simulator.md, "Engine".
"""
from .core import RankStats, Result, Segment, Sim, run

__all__ = ["RankStats", "Result", "Segment", "Sim", "run"]
