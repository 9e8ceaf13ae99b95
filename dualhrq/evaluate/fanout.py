"""Where validation's tasks run: in this process one after another, in local worker processes, or as Ray tasks
on a local Ray started for the run or an existing cluster (the optional ``ray`` extra).

A task is one predictor over all its splits (walk-forward continues each split from the previous one's state,
so a predictor's splits form a chain) and its permuted-label control: predictors and seeds fan out. Every
task computes what the sequential run would, from the same inputs, and the results are gathered in the
predictors' order, so the report is the same bit for bit. Two things make that hold off this process: the
task is shipped with cloudpickle (closures and all), and it runs with the driver's number of torch threads
(a CPU kernel may sum in another order on another count). The run directory must be storage every worker
sees (a local Ray, or a shared filesystem on a cluster): tasks write their splits there as they finish.

NOTE: workers unpickle what they are sent (`_call`, `_call_blob`, `_load_shared`), so every payload comes from
this run's own driver: the processes it spawned, or the Ray cluster the user names with ``--ray ADDRESS``
(whose nodes it therefore trusts). Nothing here reads a pickle from a file or a socket of its own.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from dualhrq.errors import ConfigurationError

# fn(shared, item) -> result: `shared` (the validation data) is shipped once per worker, the items one by one.
TaskFn = Callable[[Any, Any], Any]


class Runner(Protocol):
    name: str

    def run(self, fn: TaskFn, shared: Any, items: Sequence[Any]) -> list[Any]:
        """[fn(shared, item) for item in items], in that order."""
        ...


class Sequential:
    """Here, one task after another (the default)."""

    name = "sequential"

    def run(self, fn: TaskFn, shared: Any, items: Sequence[Any]) -> list[Any]:
        return [fn(shared, item) for item in items]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _call(payload: bytes, shared: Any, threads: int) -> Any:
    """In a worker: the task with the driver's torch threads."""
    import cloudpickle
    import torch

    torch.set_num_threads(threads)
    fn, item = cloudpickle.loads(payload)
    return fn(shared, item)


def _call_blob(payload: bytes, blob: bytes, threads: int) -> Any:
    import cloudpickle

    return _call(payload, cloudpickle.loads(blob), threads)


_SHARED: list[Any] = []


def _load_shared(blob: bytes) -> None:
    import cloudpickle

    _SHARED[:] = [cloudpickle.loads(blob)]


def _call_local(payload: bytes, threads: int) -> Any:
    return _call(payload, _SHARED[0], threads)


class LocalProcesses:
    """Worker processes on this machine (spawned: no state inherited but what is shipped)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigurationError(f"--workers: expected a positive number of processes, got {workers}")
        self.workers = workers
        self.name = f"{workers} local processes"

    def run(self, fn: TaskFn, shared: Any, items: Sequence[Any]) -> list[Any]:
        import multiprocessing as mp

        import cloudpickle

        threads = _torch_threads()
        blob = cloudpickle.dumps(shared)
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_load_shared,
                                 initargs=(blob,)) as pool:
            futures = [pool.submit(_call_local, cloudpickle.dumps((fn, item)), threads) for item in items]
            return [f.result() for f in futures]


class RayRunner:
    """Ray tasks: on the cluster at ``address``, or on a local Ray started for the run (``address`` None)."""

    def __init__(self, address: str | None = None) -> None:
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ConfigurationError("--ray needs Ray: pip install 'dualhrq[ray]'") from None
        self.address = address
        self.name = f"Ray at {address}" if address else "a local Ray"

    def run(self, fn: TaskFn, shared: Any, items: Sequence[Any]) -> list[Any]:
        import cloudpickle
        import ray

        import dualhrq

        started = not ray.is_initialized()
        if started:
            # The workers import this dualhrq, wherever the driver found it (a checkout, not only an install).
            source = str(Path(dualhrq.__file__).resolve().parents[1])
            path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
            try:
                ray.init(address=self.address, runtime_env={"env_vars": {"PYTHONPATH": path}},
                         include_dashboard=False, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ConfigurationError(f"--ray {self.address or ''}: cannot start or reach Ray ({e})") from None
        try:
            threads = _torch_threads()
            task = ray.remote(_call_blob)
            shared_ref = ray.put(cloudpickle.dumps(shared))  # one pickler for everything shipped
            refs = [task.remote(cloudpickle.dumps((fn, item)), shared_ref, threads) for item in items]
            return ray.get(refs)
        finally:
            if started:
                ray.shutdown()


def runner_for(ray: str | None, workers: int | None) -> Runner:
    """The runner `dualhrq validate` flags ask for: ``--ray [ADDRESS]`` ("local": start one), ``--workers N``."""
    if ray is not None and workers is not None:
        raise ConfigurationError("--ray and --workers: choose one way to fan the tasks out")
    if ray is not None:
        return RayRunner(None if ray == "local" else ray)
    if workers is not None and workers > 1:
        return LocalProcesses(workers)
    return Sequential()
