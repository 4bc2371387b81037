"""Cost of one update of K-FAC against SGD and Adam on the study's networks.

Prints, per batch size and training precision (``--precision``: the solvers'
``precision``, ``float32`` and/or ``bf16-mixed``), the median seconds per update of
SGD-Nesterov and Adam and the mean of K-FAC (over whole inversion periods, with
its phase split and the share of time spent inverting — the study's Figure 3, right), the
K-FAC/SGD ratio measured in the same run, and peak memory, in steady state (after
``--warmup`` updates). Synthetic learnable data (see
:func:`batches_for`). ``--network cifar10`` times the study's CIFAR-10 classifier
(3072-3000-2000-1500-1000-250-10) instead of the MNIST autoencoder.

    python -m benchmarks step-cost [--batch-sizes 250 1000 4096 10000] [--repeats 7]
    python -m benchmarks step-cost --network cifar10 --batch-sizes 1000
    python -m benchmarks step-cost --precondition-precision full
    python -m benchmarks step-cost --batch-sizes 1000 --precision float32 bf16-mixed

With several precisions, the speed-up of each over the first is printed per solver.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import os
import resource
import statistics
import time

import torch

from skkfac import KFAC
from skkfac.curvature.precision import PRECONDITION_PRECISIONS, preconditioning_dtype
from skkfac.nn import build_mlp
from skkfac.solvers import Adam, NesterovSGD
from skkfac.solvers.mixed_precision import TRAINING_PRECISIONS

NETWORKS = {
    # name: (inputs, hidden layers, outputs, loss)
    "mnist_ae": (784, (1000, 500, 250, 30, 250, 500, 1000), 784, "squared_error"),
    "cifar10": (3072, (3000, 2000, 1500, 1000, 250), 10, "cross_entropy"),
}


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timing must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_updates(solver, batches, updates: int) -> list[float]:
    """Wall time of each of ``updates`` accumulate + step calls (device work included),
    on the next batches of the iterator ``batches``."""
    times = []
    for _ in range(updates):
        X, y = next(batches)
        synchronize(X.device)
        start = time.perf_counter()
        solver.accumulate(X, y)
        solver.step()
        synchronize(X.device)
        times.append(time.perf_counter() - start)
    return times


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Distinct batches each solver cycles through, as training draws new ones: on one batch
#: repeated, K-FAC's loss fell fast enough for the damping to leave its band every few
#: updates, and each departure re-inverted the factors (MNIST autoencoder, batch 1000:
#: 0.049 s of inversion per update against 0.018 s in training on MNIST itself).
N_BATCHES = 8


def batches_for(network: str, batch: int, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:data:`N_BATCHES` batches the network can learn from (so that updates are accepted
    and the inverses are refreshed at their normal rate, as in training), drawn from one
    source: for the autoencoder, images in [0, 1] on a 30-dimensional manifold; for the
    classifier, the labels of a linear teacher. Uniform noise instead made K-FAC reject
    updates and re-invert 3 times in 10 updates, which is not what an update costs in
    training."""
    n_inputs, _, n_outputs, loss = NETWORKS[network]
    generator = torch.Generator().manual_seed(0)
    rows = batch * N_BATCHES
    if loss == "squared_error":
        codes = torch.randn(rows, 30, generator=generator)
        X = torch.sigmoid(codes @ torch.randn(30, n_inputs, generator=generator))
        y = X
    else:
        X = torch.randn(rows, n_inputs, generator=generator)
        y = (X @ torch.randn(n_inputs, n_outputs, generator=generator)).argmax(dim=1)
    return [(X[i:i + batch].to(device), y[i:i + batch].to(device))
            for i in range(0, rows, batch)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=sorted(NETWORKS), default="mnist_ae")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[250, 1000, 4096, 10000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inv-update-freq", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=20,
                        help="K-FAC updates made before timing (default: 20)")
    parser.add_argument("--curvature-batch-size", type=int, default=None,
                        help="K-FAC curvature_batch_size (0: the whole batch; default: "
                             "K-FAC's default)")
    parser.add_argument("--damping-scheme", default="tikhonov")
    parser.add_argument("--precondition-precision", choices=PRECONDITION_PRECISIONS,
                        default=inspect.signature(KFAC).parameters[
                            "precondition_precision"].default,
                        help="K-FAC precondition_precision (default: K-FAC's)")
    parser.add_argument("--precision", nargs="+", default=["float32"],
                        choices=[p for p in TRAINING_PRECISIONS if p != "auto"],
                        help="the solvers' training precision(s) (default: float32)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    n_inputs, hidden, n_outputs, loss = NETWORKS[args.network]
    if args.curvature_batch_size is None:
        args.curvature_batch_size = inspect.signature(KFAC).parameters[
            "curvature_batch_size"].default
    widths = "-".join(map(str, (n_inputs, *hidden, n_outputs)))
    print(f"{args.network} {widths} on {device}, {torch.get_num_threads()} threads; "
          f"K-FAC: {args.damping_scheme}, inv_update_freq={args.inv_update_freq}, "
          f"curvature_batch_size={args.curvature_batch_size}, "
          f"precondition_precision={args.precondition_precision} "
          f"({preconditioning_dtype(args.precondition_precision, torch.float32, device)}); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'batch':>6} {'precision':>10} {'sgd s':>8} {'adam s':>8} {'kfac s':>8} "
          f"{'ratio':>6} {'fwd/bwd':>8} {'stats':>7} {'inverse':>8} {'precond':>8} "
          f"{'update':>7} {'inv %':>6} {'peak MiB':>9}")
    speedups = []
    for batch in args.batch_sizes:
        batches = batches_for(args.network, batch, device)
        seconds = {}
        for precision in args.precision:
            seconds[precision] = time_solvers(args, precision, batches,
                                              (n_inputs, hidden, n_outputs, loss))
        first = args.precision[0]
        speedups += [f"{batch:>6} {precision:>10} " + " ".join(
                         f"{name} {seconds[first][name] / seconds[precision][name]:.2f}x"
                         for name in seconds[first])
                     for precision in args.precision[1:]]
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    if speedups:
        print(f"speed-up over {args.precision[0]} (seconds per update, same run):")
        print("\n".join(speedups))


def time_solvers(args, precision: str, batches, network) -> dict[str, float]:
    """Time SGD, Adam and K-FAC updates in ``precision``; print their row; return the
    seconds per update by solver."""
    n_inputs, hidden, n_outputs, loss = network
    X = batches[0][0]
    device = X.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sgd = NesterovSGD(build_mlp(n_inputs, hidden, n_outputs, device=device), loss,
                      lr=0.01, momentum=0.9, precision=precision)
    adam = Adam(build_mlp(n_inputs, hidden, n_outputs, device=device), loss, lr=1e-3,
                precision=precision)
    kfac = KFAC(build_mlp(n_inputs, hidden, n_outputs, device=device), loss,
                damping_scheme=args.damping_scheme, inv_update_freq=args.inv_update_freq,
                curvature_batch_size=args.curvature_batch_size or None,
                precondition_precision=args.precondition_precision, precision=precision,
                random_state=0)
    cycles = {name: itertools.cycle(batches) for name in ("sgd", "adam", "kfac")}
    timed_updates(sgd, cycles["sgd"], 2)
    timed_updates(adam, cycles["adam"], 2)
    # Warm-up past the first updates, where rejections (each forcing a re-inversion)
    # set the damping's scale: the figure is the cost of an update in steady state.
    timed_updates(kfac, cycles["kfac"], args.warmup)
    kfac.phase_times = {}  # reset
    # Every update pays 1/inv_update_freq of an inversion on average: time a whole
    # number of inversion periods. The solvers' updates alternate, so that a drift of
    # the machine's speed affects them alike.
    repeats = max(args.repeats, args.inv_update_freq)
    sgd_times, adam_times, kfac_times = [], [], []
    for _ in range(repeats):
        sgd_times += timed_updates(sgd, cycles["sgd"], 1)
        adam_times += timed_updates(adam, cycles["adam"], 1)
        kfac_times += timed_updates(kfac, cycles["kfac"], 1)
    seconds = {"sgd": statistics.median(sgd_times), "adam": statistics.median(adam_times),
               "kfac": sum(kfac_times) / repeats}
    phases = {k: v / repeats for k, v in kfac.phase_times.items()}
    print(f"{X.shape[0]:>6} {precision:>10} {seconds['sgd']:>8.3f} {seconds['adam']:>8.3f} "
          f"{seconds['kfac']:>8.3f} {seconds['kfac'] / seconds['sgd']:>6.2f} "
          f"{phases['forward_backward']:>8.3f} {phases['statistics']:>7.3f} "
          f"{phases['inverse']:>8.3f} {phases['precondition']:>8.3f} "
          f"{phases['update']:>7.3f} {100 * phases['inverse'] / seconds['kfac']:>6.1f} "
          f"{peak_memory_mib(device):>9.0f}", flush=True)
    return seconds


if __name__ == "__main__":
    main()
