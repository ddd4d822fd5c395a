"""Every file the halves exchange matches its shipped schema: the checked-in profiles, measured
results, replays and KVR-P tables, a results file ``reference.launch`` writes now, and a report
``python -m sim`` writes now; a broken file is one line naming the field; docs/schemas.md is the
generated field tables."""
import glob
import json
import os
import subprocess
import sys

import pytest

from clitools import GOOD, ROOT, edit, run, run_cli
from sim.schemas import SchemaError, markdown, NAMES, validate


def _files(pattern):
    return sorted(glob.glob(os.path.join(ROOT, pattern), recursive=True))


def test_checked_in_files_match_their_schemas():
    checked = 0
    for path in _files("profiles/gpu/*.json"):  # the GPU cost measurements: their own formats
        doc = json.load(open(path))
        assert doc.get("schema") in ("comm-cost/1", "hf-attention/1") and doc["rows"] and doc["device"], path
        keys = {"tokens", "side", "bytes", "slowdown", "overlap"} if doc["schema"] == "comm-cost/1" else \
            {"model", "impl", "queries", "keys", "median_s"}
        assert all(keys <= set(row) for row in doc["rows"]), path
    for path in _files("profiles/*.json"):
        validate(json.load(open(path)), "profile", path)
        checked += 1
    for path in _files("results/**/*.json"):
        doc = json.load(open(path))
        if "meta" in doc or "components" in doc:  # benchmark tables and profile copies
            continue
        if doc.get("schema") == "kv-chain/1":  # reference.measure.kv_chain's table: its own format
            keys = {"model", "chunk", "past", "single_s", "resident_s", "copy_s"}
            assert doc["rows"] and doc["device"] and all(keys <= set(row) for row in doc["rows"]), path
            continue
        if doc.get("schema") == "chain-probe/1":  # reference.netcluster chain's report: its own format
            assert doc["hops"]["sleep"] and doc["hops"]["compute"] and doc["asleep_median_s"] > 0, path
            continue
        if doc.get("schema") == "busy-cpu-probe/1":  # reference.netcluster busy-cpu's report: its own format
            assert doc["windows"] and doc["cpu_s_per_byte_windows"] and doc["cpu_s_per_byte"] >= 0, path
            continue
        if doc.get("schema") == "busy-cpu-fit/1":  # the same at several message sizes, and the fit
            assert len(doc["reports"]) >= 2 and doc["per_byte_s"] > 0 and doc["per_message_s"] >= 0, path
            continue
        if doc.get("schema") == "link-probe/1":  # reference.netcluster probe's report: its own format
            assert doc["world_size"] >= 2 and "pairs" in doc and "all_gather" in doc, path
            continue
        if doc.get("schema") == "kvr-partition-table/1":  # a KVR-P table kept with the rounds it made
            validate(doc, "kvr-table", path)
            checked += 1
            continue
        kind = "trace" if "traceEvents" in doc else "replay" if "replays" in doc else "results"
        validate(doc, kind, path)
        checked += 1
    for path in _files("scenarios/tables/*.json"):
        validate(json.load(open(path)), "kvr-table", path)
        checked += 1
    assert checked > 250


def test_fresh_results_and_report_match(tmp_path):
    out = tmp_path / "r.json"
    proc = run([sys.executable, "-m", "reference.launch", "--model", "tiny-llama", "--scheme", "single",
                "--context", "8", "--repeat", "1", "--out", str(out)])
    assert proc.returncode == 0, proc.stderr
    validate(json.loads(out.read_text()), "results", str(out))
    proc = run_cli(tmp_path, GOOD, "--out", str(tmp_path / "o"), "--set", "workload.contexts=[64, 256]")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    validate(report, "report", "report.json")
    assert report["provenance"]["overrides"] == ["workload.contexts=[64, 256]"]
    assert report["provenance"]["cost_sources"]["tiny-llama"].startswith("analytic: h100-sxm")


def test_a_broken_results_file_is_one_line_naming_the_field(tmp_path):
    good = json.load(open(_files("results/cpu/*.json")[0]))
    bad = dict(good, ttft_median_s="fast")
    with pytest.raises(SchemaError, match=r"^x.json: ttft_median_s: 'fast' is not of type 'number' \(the results schema"):
        validate(bad, "results", "x.json")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    doc = edit(lambda d: d.update(measured={"results": [str(path)]}))
    proc = run_cli(tmp_path, doc)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert f"measured results {path}: ttft_median_s: 'fast' is not of type 'number'" in proc.stderr


def test_docs_hold_the_generated_tables():
    with open(os.path.join(ROOT, "docs", "schemas.md"), encoding="utf-8") as f:
        page = f.read()
    generated = page.split("<!-- generated: python -m sim.schemas -->\n", 1)[1]
    assert generated == "\n".join(markdown(n) for n in NAMES)
    assert subprocess.run([sys.executable, "-m", "sim.schemas"], capture_output=True, text=True,
                          cwd=ROOT).stdout == generated
