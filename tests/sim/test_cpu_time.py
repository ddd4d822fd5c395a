"""sim/validation/cpu_time.py: measured compute split into CPU and wall time from traces with cpu_s."""
import json

from sim.validation.cpu_time import main


def _trace(path, with_cpu=True):
    def args(layer, cpu):
        return {"layer": layer, **({"cpu_s": cpu} if with_cpu else {})}
    events = []
    for pid, (layer_cpu, wait_cpu) in ((1, (0.004, 0.0005)), (2, (0.008, 0.001))):
        events += [{"ph": "X", "name": "layer L0", "cat": "layer", "pid": pid, "tid": 0, "ts": 0, "dur": 10000,
                    "args": args(0, layer_cpu)},
                   {"ph": "X", "name": "recv", "cat": "wait", "pid": pid, "tid": 0, "ts": 1000, "dur": 2000,
                    "args": args(0, wait_cpu)}]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"traceEvents": events}))


def test_compute_is_the_layers_less_the_waits_in_wall_and_cpu_time(tmp_path, capsys):
    _trace(tmp_path / "d" / "traces" / "c_tsp_P2_C64_r1.trace.json")
    assert main([str(tmp_path / "d")]) == 0
    [row] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("c_tsp")]
    # wall 8 ms on both ranks; CPU 3.5 and 7 ms (median 5.25); wall / CPU 2.29 and 1.14 (median 1.71)
    assert row.split()[1:] == ["2", "8.0", "5.2", "1.71"]


def test_a_trace_without_cpu_seconds_is_a_one_line_error(tmp_path, capsys):
    _trace(tmp_path / "d" / "traces" / "old.trace.json", with_cpu=False)
    assert main([str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no cpu_s" in err and "old.trace.json" in err
    assert main([str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
