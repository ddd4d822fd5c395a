"""The KVR-S lookup table and KVR-P, the partition predicted from it.

A table is a JSON file of searched partitions as fractions of C, keyed by model, hardware, cluster, P
and C (schema in docs/partitioning.md, ``SCHEMA`` below), built by
``python -m sim.partition build-table SCENARIO.yaml --out FILE``.

KVR-P for a context C and P ranks takes the table's entries of the job's model, hardware, cluster, P
and order mode, sorted by context:
- C in the table: that entry's fractions;
- C between two entries c_lo < C < c_hi: f = (1 - w) f_lo + w f_hi with w = (C - c_lo) / (c_hi - c_lo),
  per rank (linear interpolation of the neighbours' fractions);
- C outside the table's range: the nearest entry's fractions (clamped, no extrapolation);
then rounded to whole tokens summing to C by largest remainder, every chunk >= 1
(``partition.round_fractions``). The rank -> GPU order is the nearest entry's (the lower one on a tie).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Any, Iterable, Sequence

from ..outputs import write_text
from ..schemas import SchemaError, validate

from ..engine import run
from ..job import BUILTIN
from . import Plan, PartitionError, even, round_fractions
from .search import search_job

SCHEMA = "kvr-partition-table/1"
ENTRY_KEYS = ("model", "gpu", "dtype", "hardware_digest", "cluster", "cluster_digest", "order_mode", "gpus",
              "context", "fractions", "chunks", "order", "ttft_s", "kvr_e_ttft_s", "evaluations")


def digest(obj: Any) -> str:
    """A short fingerprint of a frozen spec (its repr), so a table is not used for another cluster or
    GPU that happens to have the same name."""
    return hashlib.sha256(repr(obj).encode()).hexdigest()[:16]


def job_key(job) -> dict:
    """The fields of a table entry that say which job it is for (all but the context)."""
    return {"model": job.model.name, "gpu": job.gpu.name, "dtype": job.dtype,
            "hardware_digest": digest((job.gpu, job.dtype, job.model, *(job.gpu.runtime_key() if job.gpu else ()))), "cluster": job.cluster.name,
            "cluster_digest": digest(job.cluster), "order_mode": job.scheme.order, "gpus": job.num_gpus}


# ----- building --------------------------------------------------------------------------------------
def entry(job) -> dict:
    """Search ``job`` (a kvr-s job) and return its table entry."""
    result, gpus = search_job(job)
    even_plan = Plan(tuple(even(job.context, job.num_gpus)), tuple(range(job.num_gpus)))
    even_ttft_s = run(dataclasses.replace(job, scheme=BUILTIN["kvr-e"], gpu_order=None), even_plan).ttft_s
    return {**job_key(job), "context": job.context, "fractions": [c / job.context for c in result.chunks],
            "chunks": list(result.chunks), "order": list(gpus), "ttft_s": result.ttft_s,
            "kvr_e_ttft_s": even_ttft_s, "evaluations": result.evaluations}


def build(jobs: Iterable, *, progress: bool = True, desc: str = "kvr-s table") -> dict:
    """A table (the JSON document) of the searched partitions of ``jobs``, with a progress bar."""
    from tqdm import tqdm

    jobs = list(jobs)
    entries = [entry(job) for job in tqdm(jobs, desc=desc, unit="search", disable=None if progress else True)]
    return {"schema": SCHEMA, "entries": entries}


def save(table: dict, path: str) -> None:
    """Write the table atomically (a temporary file beside it, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(table, indent=1) + "\n")


# ----- loading ---------------------------------------------------------------------------------------
_LOADED: dict[tuple[str, float], dict] = {}


def load(path: str) -> dict:
    """Read and check a table file; ``PartitionError`` names the file and what is wrong."""
    try:
        key = (os.path.abspath(path), os.path.getmtime(path))
        if key in _LOADED:
            return _LOADED[key]
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except OSError as e:
        raise PartitionError(f"table {path}: cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise PartitionError(f"table {path}: not valid JSON ({e})") from None
    check_table(table, path)
    _LOADED[key] = table
    return table


def check_table(table: Any, path: str = "table") -> None:
    try:
        validate(table, "kvr-table", f"table {path}")
    except SchemaError as e:
        raise PartitionError(str(e)) from None
    if not (isinstance(table, dict) and table.get("schema") == SCHEMA and isinstance(table.get("entries"), list)):
        raise PartitionError(f"table {path}: must be a JSON object with schema {SCHEMA!r} and a list of entries")
    for i, e in enumerate(table["entries"]):
        missing = [k for k in ENTRY_KEYS if not isinstance(e, dict) or k not in e]
        if missing:
            raise PartitionError(f"table {path}: entries[{i}] lacks {missing}")
        f = e["fractions"]
        ok = (isinstance(f, list) and len(f) == e["gpus"] == len(e["order"]) and all(x > 0 for x in f)
              and abs(sum(f) - 1) < 1e-9)
        if not ok:
            raise PartitionError(f"table {path}: entries[{i}].fractions must be {e['gpus']} positive numbers "
                                 f"summing to 1, got {f}")


def matching(table: dict, job, path: str = "table") -> list[dict]:
    """The entries for the job's model, hardware, cluster, P and order mode, sorted by context."""
    key = job_key(job)
    names = ("model", "gpu", "dtype", "cluster", "order_mode", "gpus")
    found = [e for e in table["entries"] if all(e[k] == key[k] for k in names)]
    if not found:
        have = sorted({tuple(e[k] for k in names) for e in table["entries"]})
        raise PartitionError(f"table {path}: no entry for model={key['model']} gpu={key['gpu']} "
                             f"dtype={key['dtype']} cluster={key['cluster']} order={key['order_mode']} "
                             f"P={key['gpus']}; it has (model, gpu, dtype, cluster, order, P) in {have}")
    for k in ("hardware_digest", "cluster_digest"):
        if any(e[k] != key[k] for e in found):
            what = "hardware (GPU, dtype, model shapes)" if k.startswith("hardware") else f"cluster {key['cluster']!r}"
            raise PartitionError(f"table {path}: was built for another {what} of the same name; rebuild it")
    return sorted(found, key=lambda e: e["context"])


def covers(path: str, jobs: Iterable) -> None:
    """``PartitionError`` unless the table at ``path`` has entries for every job's model, hardware,
    cluster, P and order mode."""
    table = load(path)
    for job in jobs:
        matching(table, job, path)


# ----- KVR-P -----------------------------------------------------------------------------------------
def interpolate(entries: Sequence[dict], context: int) -> tuple[list[float], tuple[int, ...]]:
    """The fractions and order KVR-P uses at ``context`` (module docstring); ``entries`` sorted by context."""
    contexts = [e["context"] for e in entries]
    if context <= contexts[0]:
        return list(entries[0]["fractions"]), tuple(entries[0]["order"])
    if context >= contexts[-1]:
        return list(entries[-1]["fractions"]), tuple(entries[-1]["order"])
    hi = next(i for i, c in enumerate(contexts) if c >= context)
    lo_e, hi_e = entries[hi - 1], entries[hi]
    w = (context - lo_e["context"]) / (hi_e["context"] - lo_e["context"])
    fractions = [(1 - w) * a + w * b for a, b in zip(lo_e["fractions"], hi_e["fractions"])]
    nearest = hi_e if w > 0.5 else lo_e
    return fractions, tuple(nearest["order"])


def predict(entries: Sequence[dict], context: int) -> Plan:
    """KVR-P: whole-token chunks summing to ``context`` (each >= 1) and the rank -> GPU order."""
    fractions, order = interpolate(entries, context)
    return Plan(tuple(round_fractions(context, fractions)), order)


_ON_THE_FLY: dict = {}


def predict_job(job) -> Plan:
    """KVR-P for a simulator job: from ``job.scheme.table``, or from a table built on the fly at
    ``job.scheme.table_contexts`` (by KVR-S searches, cached per model, hardware, cluster, P)."""
    scheme = job.scheme
    if scheme.table is not None:
        entries = matching(load(scheme.table), job, scheme.table)
    else:
        key = (dataclasses.replace(job, context=0), id(job.cost_model), scheme.table_contexts)
        if key not in _ON_THE_FLY:
            contexts = [c for c in scheme.table_contexts if c >= job.num_gpus] or [job.context]
            searched = [dataclasses.replace(job, context=c, scheme=dataclasses.replace(scheme, partitioner="kvr-s"))
                        for c in contexts]
            table = build(searched, progress=False)
            _ON_THE_FLY[key] = (matching(table, searched[0]), job.cost_model)
        entries = _ON_THE_FLY[key][0]
    if job.gpu_order is not None:
        return Plan(predict(entries, job.context).chunks, tuple(job.gpu_order))
    return predict(entries, job.context)
