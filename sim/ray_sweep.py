"""A sweep's jobs on a Ray cluster (``python -m sim SCENARIO --ray [ADDRESS]``; the optional ``[ray]``
extra): the same ``report._run_one`` on each job as the process pool runs, so the rows are identical
(every job is deterministic; the rows keep the sweep's order). docs/scaling.md, "Sweeps on Ray".
Reference: Ray Core, "Tasks" (docs.ray.io).
"""
from __future__ import annotations

LOCAL = "local"  # --ray with no address: a Ray instance of this machine, started and stopped here


class RayError(ValueError):
    """Ray was asked for but is not installed, or its cluster cannot be joined."""


def check() -> None:
    """Ray can be imported; ``RayError`` naming the extra to install if not."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RayError("--ray: ray is not installed; pip install -e '.[ray]'") from None


def run(todo: list, run_one, address: str, bar) -> list:
    """``run_one(job)`` for every job of ``todo`` as Ray tasks on the cluster at ``address`` (``LOCAL``:
    start one here; ``auto``: the cluster this machine belongs to; ``ray://HOST:10001``: a remote one),
    a few jobs a task; returns the results in ``todo``'s order. ``bar`` is the progress bar's settings.
    A Ray instance already initialised in this process (a test's) is used as it is."""
    import ray
    from tqdm import tqdm

    check()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=None if address == LOCAL else address, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise RayError(f"--ray {address}: {e}") from None
    try:
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        size = max(1, len(todo) // (8 * cpus))  # as the process pool's chunks: a few tasks a core
        task = ray.remote(_run_chunk)
        refs = [task.remote(run_one, todo[i:i + size]) for i in range(0, len(todo), size)]
        out = []
        with tqdm(**bar) as progress:
            for ref in refs:
                chunk = ray.get(ref)
                out += chunk
                progress.update(len(chunk))
        return out
    finally:
        if started:
            ray.shutdown()


def _run_chunk(run_one, jobs: list) -> list:
    """A Ray task: ``run_one`` of each job, in order."""
    return [run_one(job) for job in jobs]
