"""Data-parallel K-FAC: 1 against N gloo ranks on the MNIST autoencoder.

``python -m benchmarks scaling --data-home /work/shared/data`` (from the repository
root) fits the study's autoencoder (784-1000-500-250-30-250-500-1000-784, tanh, float32,
batch 1000) with :func:`skkfac.distributed.fit_data_parallel` for each number of ranks
(one torch thread per rank), a fixed training-time budget each, and measures:

* throughput: samples per second of training time (``n_updates × batch / train_time``);
* time-to-loss: training seconds until the held-out reconstruction loss (2,000 test
  images, evaluated with the clock paused) first reaches the worst of the runs' final
  losses, so that every run reaches the target;
* the inverse refresh, shared out over the ranks (each layer inverted by one rank and
  broadcast) against computed on every rank: median wall time of a refresh of all eight
  layers, both interleaved in the same processes.

Writes ``scaling.csv``, ``history.csv``, ``inverses.csv`` and ``summary.rst`` (the table
the user guide's *Scaling out* page includes, with the command and the load averages).
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ENCODER = (1000, 500, 250, 30)
BATCH = 1000
EVAL_ROWS = 2000
DEFAULT_OUT = Path("benchmarks") / "results" / "scaling"


def make_autoencoder(max_time: float, seed: int):
    from skkfac import KFACAutoencoder

    return KFACAutoencoder(encoder_layer_sizes=ENCODER, batch_size=BATCH, max_time=max_time,
                           max_iter=10**9, tol=0.0, n_iter_no_change=10**9, early_stopping=False,
                           eval_interval=max_time / 12, dtype="float32", random_state=seed,
                           device="cpu")


def measure_ranks(X_train, X_eval, n_processes: int, max_time: float, seed: int):
    """One data-parallel fit: a summary row and its learning curve."""
    from skkfac.distributed import fit_data_parallel

    start = time.perf_counter()
    fitted = fit_data_parallel(make_autoencoder(max_time, seed), X_train,
                               n_processes=n_processes, threads_per_process=1,
                               eval_set=X_eval)
    wall = time.perf_counter() - start
    history = fitted.history_.assign(n_processes=n_processes)
    row = {"n_processes": n_processes, "n_updates": fitted.n_updates_,
           "train_time": fitted.train_time_,
           "samples_per_s": fitted.n_updates_ * BATCH / fitted.train_time_,
           "final_eval_loss": float(history["eval_loss"].iloc[-1]),
           # One rank: every layer's; several: each rank its layers' plus the broadcast.
           "precondition_s_per_update": float(history["time_precondition"].iloc[-1])
           / max(fitted.n_updates_, 1),
           "wall_seconds": wall}
    return row, history


def time_to_loss(history: pd.DataFrame, target: float) -> float:
    """First training time at which the held-out loss is at most ``target`` (NaN: never)."""
    reached = history[history["eval_loss"] <= target]
    return float(reached["time"].iloc[0]) if len(reached) else float("nan")


def _inverse_rank(rank, world_size, init_file, X, repeats, out_file):
    """One rank of the inverse-placement measurement."""
    import torch
    import torch.distributed as dist

    from skkfac import KFAC
    from skkfac.nn import build_mlp

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        sizes = (*ENCODER, *ENCODER[-2::-1])
        model = build_mlp(X.shape[1], sizes, X.shape[1], "tanh",
                          generator=torch.Generator().manual_seed(0))
        opt = KFAC(model, "squared_error", curvature_batch_size=None)
        share = torch.from_numpy(X[rank::world_size][:BATCH // world_size])
        opt.accumulate(share, share)
        opt.step()  # factors in place
        timings = {True: [], False: []}
        for _ in range(repeats):
            for distribute in (True, False):  # interleaved: same load for both
                opt.distribute_inverses = distribute
                dist.barrier()
                start = time.perf_counter()
                opt._refresh_inverses()
                dist.barrier()
                timings[distribute].append(time.perf_counter() - start)
        if rank == 0:
            pd.DataFrame({"mode": ["shared out", "every rank"],
                          "median_seconds": [float(np.median(timings[True])),
                                             float(np.median(timings[False]))],
                          "repeats": repeats}).to_csv(out_file, index=False)
    finally:
        dist.destroy_process_group()


def measure_inverses(X, world_size: int, repeats: int) -> pd.DataFrame:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="skkfac-scaling-") as folder:
        out_file = Path(folder) / "inverses.csv"
        mp.start_processes(_inverse_rank, nprocs=world_size, start_method="spawn",
                           args=(world_size, os.path.join(folder, "init"), X, repeats,
                                 os.fspath(out_file)))
        return pd.read_csv(out_file).assign(n_processes=world_size)


def write_summary(out: Path, scaling: pd.DataFrame, inverses: pd.DataFrame, *,
                  command: str, loads: list, target: float, max_time: float) -> Path:
    base = scaling.iloc[0]
    lines = [
        ".. Written by benchmarks/scaling.py; do not edit.",
        "",
        f"Command: ``{command}``, {datetime.date.today()}, budget {max_time:g} s of "
        f"training per run, one torch thread per rank, gloo. Load average (1 min) "
        f"before / after: {loads[0]:.2f} / {loads[1]:.2f} on {os.cpu_count()} cores"
        + (" — a **loaded, shared machine**: compare the ratios, not the absolute "
           "numbers." if loads[0] > 1.0 else " (the load before the runs is the "
           "machine's: under one core busy means no other job was running; the runs "
           "themselves raise it)."),
        "",
        ".. list-table::",
        "   :header-rows: 1",
        "",
        "   * - ranks",
        "     - updates",
        "     - samples/s",
        "     - speed-up",
        f"     - s to loss {target:.4g}",
        "     - final held-out loss",
        "     - preconditioning s/update",
    ]
    for row in scaling.itertuples():
        lines += [f"   * - {row.n_processes}", f"     - {row.n_updates}",
                  f"     - {row.samples_per_s:.0f}",
                  f"     - {row.samples_per_s / base.samples_per_s:.2f}",
                  f"     - {row.time_to_target:.1f}", f"     - {row.final_eval_loss:.4g}",
                  f"     - {row.precondition_s_per_update:.3f}"]
    lines += ["", "Inverse refresh of the eight layers with "
              f"{int(inverses['n_processes'].iloc[0])} ranks (median of "
              f"{int(inverses['repeats'].iloc[0])}): "
              + ", ".join(f"{r.mode} {r.median_seconds:.3f} s" for r in inverses.itertuples())
              + "."]
    path = out / "summary.rst"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks scaling",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--max-time", type=float, default=45.0,
                        help="training seconds per run (default 45)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--inverse-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from skkfac.datasets import load_mnist

    command = shlex.join(["python", "-m", "benchmarks", "scaling",
                          *(sys.argv[1:] if argv is None else argv)])
    mnist = load_mnist(args.data_home)
    X_train = mnist.X_train
    X_eval = mnist.X_test[:EVAL_ROWS]
    args.out.mkdir(parents=True, exist_ok=True)
    loads = [os.getloadavg()[0]]
    rows, histories = [], []
    for n in args.ranks:
        row, history = measure_ranks(X_train, X_eval, n, args.max_time, args.seed)
        print(f"{n} rank(s): {row}", flush=True)
        rows.append(row)
        histories.append(history)
    inverses = measure_inverses(X_train, max(args.ranks), args.inverse_repeats)
    loads.append(os.getloadavg()[0])
    scaling = pd.DataFrame(rows)
    target = float(scaling["final_eval_loss"].max())
    scaling["time_to_target"] = [time_to_loss(h, target) for h in histories]
    scaling["target_loss"] = target
    scaling["load_avg_before"], scaling["load_avg_after"] = loads
    scaling.to_csv(args.out / "scaling.csv", index=False)
    pd.concat(histories).to_csv(args.out / "history.csv", index=False)
    inverses.to_csv(args.out / "inverses.csv", index=False)
    path = write_summary(args.out, scaling, inverses, command=command, loads=loads,
                         target=target, max_time=args.max_time)
    print(path.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
