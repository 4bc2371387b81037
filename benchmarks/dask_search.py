"""``tune --scheduler``: the search's trials run in parallel on a ``dask.distributed`` cluster.

The client keeps the optimiser and the CSV; the workers only train. Up to
``n_parallel`` trials (default: the cluster's worker threads) are in flight at once.
Each new point is asked with the in-flight points told a *constant lie* (the best
objective so far, skopt's ``'cl_min'`` strategy), so parallel trials explore different
places. When a trial finishes its row is appended to ``tune_<solver>.csv`` at once, by
the client, in completion order, with its trial number and the worker that ran it.

Trial numbers are fixed when a trial is submitted and decide its seeds
(``seed + 1000 trial + repeat``), so a trial means the same training wherever and
whenever it runs. Resuming reads the CSV, tells the optimiser every finished trial and
runs the trial numbers that are missing (those in flight when the search stopped, then
new ones) up to ``n_trials``. Unlike the sequential search, the points a resumed parallel
search proposes are not those of an uninterrupted one: completion order already varies
from run to run.

Workers are prepared by :class:`skkfac.workers.TorchWorkerSetup`: torch threads pinned
(``--threads``, default 1) and one device per worker, round-robin over CUDA devices.
"""

from __future__ import annotations

import contextlib
import math
import time
import uuid
import warnings

from benchmarks.records import log

#: Extra column of ``tune_<solver>.csv`` in a parallel search.
WORKER_COLUMN = "worker"


@contextlib.contextmanager
def dask_client(scheduler: str, *, n_workers: int | None = None, threads: int | None = 1):
    """A client of ``scheduler`` (an address, or ``'local'`` for a new ``LocalCluster``).

    The local cluster has ``n_workers`` single-threaded worker processes (default: one
    per core). Every worker gets :class:`~skkfac.workers.TorchWorkerSetup`.
    """
    import os

    from distributed import Client, LocalCluster

    from skkfac.workers import setup_torch_workers

    with contextlib.ExitStack() as stack:
        if scheduler == "local":
            cluster = stack.enter_context(LocalCluster(
                n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1,
                processes=True, dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        else:
            client = stack.enter_context(Client(scheduler))
        workers = setup_torch_workers(client, threads=threads)
        log(f"dask: {len(workers)} worker(s) at {client.scheduler.address}: "
            + ", ".join(f"{name} ({device}, {n} thread(s))"
                        for name, device, n in workers.values()))
        yield client


def _run_trial(evaluate, params: dict, trial: int) -> tuple[dict, str]:
    """On a worker: one trial, and which worker ran it (``name@address``)."""
    from distributed import get_worker

    worker = get_worker()
    return evaluate(params, trial), f"{worker.name}@{worker.address}"


def _propose(optimizer, pending: list):
    """The next point, with the ``pending`` points told the best objective so far."""
    if not pending:
        return optimizer.ask()
    liar = optimizer.copy(random_state=optimizer.rng)
    lie = min(optimizer.yi) if optimizer.yi else 0.0
    liar.tell(pending, [lie] * len(pending))
    return liar.ask()


def run_parallel_search(space: dict, evaluate, csv_log, *, client, n_trials: int,
                        n_initial_points: int, random_state: int, label: str = "search",
                        progress=log, n_parallel: int | None = None):
    """:func:`benchmarks.tune.run_search` with the trials run on a Dask ``client``.

    Parameters are those of :func:`~benchmarks.tune.run_search`, plus ``client`` and
    ``n_parallel`` (trials in flight; default: the cluster's worker threads).
    ``csv_log`` needs the column ``'worker'``.

    Returns
    -------
    optimizer : skopt.Optimizer
        Told every finished trial.
    trials : pandas.DataFrame
        The CSV's rows (completion order).
    """
    from distributed import as_completed

    from benchmarks.trials import cast_to_dimension, make_optimizer, short_value

    names = list(space)
    dimensions = list(space.values())
    optimizer = make_optimizer(space, n_initial_points=n_initial_points,
                               random_state=random_state)
    done = csv_log.read()
    finished = {int(t) for t in done["trial"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(done):
            optimizer.tell([[cast_to_dimension(d, row[n]) for d, n in zip(dimensions, names)]
                            for row in done.to_dict("records")],
                           done["objective"].astype(float).tolist())
    todo = iter([t for t in range(n_trials) if t not in finished])
    if len(done):
        progress(f"{label}: resumed with {len(done)} finished trial(s) from {csv_log.path}")
    n_parallel = n_parallel or max(1, sum(client.nthreads().values()))
    remote_evaluate = client.scatter(evaluate, broadcast=True, hash=False)
    run_id = uuid.uuid4().hex[:8]
    pending = {}  # future -> (trial, point, submitted at)

    def submit():
        trial = next(todo, None)
        if trial is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            point = [cast_to_dimension(d, v) for d, v in zip(
                dimensions, _propose(optimizer, [x for _, x, _ in pending.values()]))]
        future = client.submit(_run_trial, remote_evaluate, dict(zip(names, point)), trial,
                               key=f"trial-{trial}-{run_id}", pure=False)
        pending[future] = (trial, point, time.time())
        return future

    best = done["val_loss"].min() if len(done) else math.inf
    completed = as_completed([f for f in (submit() for _ in range(n_parallel)) if f])
    try:
        for future in completed:
            trial, point, submitted = pending.pop(future)
            result, worker = future.result()
            csv_log.append({"trial": trial, **dict(zip(names, point)), **result,
                            WORKER_COLUMN: worker})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                optimizer.tell(point, float(result["objective"]))
            loss = float(result["val_loss"])
            best = min(best, loss) if math.isfinite(loss) else best
            shown = " ".join(f"{k}={short_value(v)}" for k, v in zip(names, point))
            progress(f"{label}: trial {trial} on {worker}: {shown} -> val loss {loss:.5g} "
                     f"(best {best:.5g}); {time.time() - submitted:.1f} s since submitted, "
                     f"{len(pending)} in flight")
            following = submit()
            if following is not None:
                completed.add(following)
    finally:
        for future in pending:  # stopped by an error or Ctrl-C: free the workers
            future.cancel()
    return optimizer, csv_log.read()


class SearchBackend:
    """How ``run_tune`` runs a search: in this process (``sequential``, the caller's
    search function), or on a Dask client."""

    def __init__(self, client=None, sequential=None):
        self.client = client
        self.sequential = sequential

    def columns(self, columns: list[str]) -> list[str]:
        return [*columns, WORKER_COLUMN] if self.client is not None else list(columns)

    def run_search(self, *args, **kwargs):
        if self.client is None:
            return self.sequential(*args, **kwargs)
        return run_parallel_search(*args, client=self.client, **kwargs)


@contextlib.contextmanager
def search_backend(scheduler: str | None = None, *, n_workers: int | None = None,
                   threads: int | None = 1, sequential=None):
    """The :class:`SearchBackend` for ``--scheduler`` (None: ``sequential``, in this
    process)."""
    if scheduler is None:
        yield SearchBackend(sequential=sequential)
        return
    with dask_client(scheduler, n_workers=n_workers, threads=threads) as client:
        yield SearchBackend(client, sequential=sequential)
