"""The timed prefills of a launch each start as the first did: no earlier prefill's result (its
KV-cache) is alive while the next runs (docs/validation.md, section 8, "Timed against traced")."""
import gc
import json
import weakref

import reference.timed_prefill as timed_prefill


def test_no_timed_prefill_runs_while_an_earlier_result_is_held(tmp_path, monkeypatch):
    from reference.launch import main

    real, alive, seen = timed_prefill.prefill, [], []

    def prefill(*args, **kwargs):
        gc.collect()
        seen.append(sum(r() is not None for r in alive))  # earlier results still held at this call
        res = real(*args, **kwargs)
        alive.append(weakref.ref(res))
        return res

    monkeypatch.setattr(timed_prefill, "prefill", prefill)
    out = tmp_path / "r.json"
    assert main(["--model", "tiny-llama", "--scheme", "single", "--context", "64", "--dtype", "fp32",
                 "--warmup", "1", "--repeat", "3", "--trace", str(tmp_path / "t.trace.json"), "--out", str(out)]) == 0
    assert len(json.loads(out.read_text())["ttft_s"]) == 3 and (tmp_path / "t.trace.json").exists()
    # the warm-up, three timed prefills and the traced one, each with no earlier result held
    assert seen == [0, 0, 0, 0, 0], seen
