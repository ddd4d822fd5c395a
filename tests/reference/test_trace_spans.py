"""``reference.measure.trace_spans``: timed TTFT over the traced prefill's span, per rank count."""
import json

from reference.measure.trace_spans import main


def _launch(folder, name: str, world: int, ttft: list[float], events: list[tuple[float, float]]) -> None:
    (folder / "traces").mkdir(exist_ok=True)
    trace = {"traceEvents": [{"ph": "M", "name": "process_name", "pid": 0}]
             + [{"ph": "X", "name": "layer 0", "pid": i + 1, "tid": 0, "ts": ts * 1e6, "dur": dur * 1e6}
                for i, (ts, dur) in enumerate(events)]}
    (folder / "traces" / f"{name}.trace.json").write_text(json.dumps(trace))
    results = {"world_size": world, "ttft_s": ttft, "ttft_median_s": sorted(ttft)[len(ttft) // 2] if len(ttft) % 2
               else sum(sorted(ttft)[len(ttft) // 2 - 1:len(ttft) // 2 + 1]) / 2, "trace": f"traces/{name}.trace.json"}
    (folder / f"{name}.json").write_text(json.dumps(results))


def test_timed_over_traced_per_rank_count(tmp_path, capsys):
    # P=8: spans 1.0 s (events 10.0-10.6 and 10.2-11.0) and 0.5 s; timed medians 1.2 and 0.5 s.
    _launch(tmp_path, "a", 8, [1.1, 1.3], [(10.0, 0.6), (10.2, 0.8)])
    _launch(tmp_path, "b", 8, [0.55, 0.45], [(3.0, 0.5)])
    _launch(tmp_path, "c", 4, [0.9, 1.0], [(0.0, 1.0)])
    _launch(tmp_path, "single", 1, [0.2, 0.3], [(0.0, 0.1)])  # one rank: no chain, not counted
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "P=4: 1 launches; timed prefills by position, mean ms: 900, 1000; the second slower than the first in 1 of 1",
        "P=4: 1 traced launches, timed TTFT median / traced span: median 0.95, p10 0.95, p90 0.95",
        "P=8: 2 launches; timed prefills by position, mean ms: 825, 875; the second slower than the first in 1 of 2",
        "P=8: 2 traced launches, timed TTFT median / traced span: median 1.10, p10 1.00, p90 1.20"]


def test_bad_folders_are_one_line_and_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith("not a folder: " + str(tmp_path / "none"))
    assert main([str(tmp_path)]) == 2  # a folder with no launch
    err = capsys.readouterr().err.strip()
    assert "no launch of 2 ranks or more" in err and len(err.splitlines()) == 1
