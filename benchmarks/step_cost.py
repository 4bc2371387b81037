"""Cost of one update of K-FAC against SGD on the study's MNIST autoencoder network.

Prints, per batch size, the median seconds per update of SGD-Nesterov and of K-FAC (with
its phase split and the share of time spent inverting — the study's Figure 3, right), the
K-FAC/SGD ratio measured in the same run, and peak memory. Random data: cost does not
depend on the pixel values.

    python benchmarks/step_cost.py [--batch-sizes 250 1000 4096 10000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from skkfac import KFAC
from skkfac.nn import build_mlp
from skkfac.solvers import NesterovSGD

LAYERS = (1000, 500, 250, 30, 250, 500, 1000)


def median_step_seconds(solver, X, repeats: int) -> float:
    """Median wall time of accumulate + step, after two warm-up updates."""
    times = []
    for i in range(repeats + 2):
        start = time.perf_counter()
        solver.accumulate(X, X)
        solver.step()
        if X.device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_memory_mib(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[250, 1000, 4096, 10000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--inv-update-freq", type=int, default=10)
    parser.add_argument("--curvature-batch-size", type=int, default=256,
                        help="K-FAC curvature_batch_size (0: the whole batch)")
    parser.add_argument("--damping-scheme", default="tikhonov")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"MNIST autoencoder 784-{'-'.join(map(str, LAYERS))}-784 on {device}, "
          f"{torch.get_num_threads()} threads; K-FAC: {args.damping_scheme}, "
          f"inv_update_freq={args.inv_update_freq}, "
          f"curvature_batch_size={args.curvature_batch_size}")
    header = (f"{'batch':>6} {'sgd s':>8} {'kfac s':>8} {'ratio':>6} {'fwd/bwd':>8} "
              f"{'stats':>7} {'inverse':>8} {'precond':>8} {'update':>7} {'inv %':>6} "
              f"{'peak MiB':>9}")
    print(header)
    for batch in args.batch_sizes:
        X = torch.rand(batch, 784, device=device)
        sgd = NesterovSGD(build_mlp(784, LAYERS, 784, device=device), lr=0.1, momentum=0.9)
        sgd_seconds = median_step_seconds(sgd, X, args.repeats)
        # Every update of the timed window pays 1/inv_update_freq of an inversion on
        # average: time a whole number of inversion periods.
        repeats = max(args.repeats, args.inv_update_freq)
        kfac = KFAC(build_mlp(784, LAYERS, 784, device=device), lr=0.1,
                    damping_scheme=args.damping_scheme, inv_update_freq=args.inv_update_freq,
                    curvature_batch_size=args.curvature_batch_size or None, random_state=0)
        for _ in range(2):  # warm-up
            kfac.accumulate(X, X)
            kfac.step()
        kfac.phase_times = dict.fromkeys(kfac.phase_times, 0.0)
        start = time.perf_counter()
        for _ in range(repeats):
            kfac.accumulate(X, X)
            kfac.step()
        kfac_seconds = (time.perf_counter() - start) / repeats
        phases = {k: v / repeats for k, v in kfac.phase_times.items()}
        print(f"{batch:>6} {sgd_seconds:>8.3f} {kfac_seconds:>8.3f} "
              f"{kfac_seconds / sgd_seconds:>6.2f} {phases['forward_backward']:>8.3f} "
              f"{phases['statistics']:>7.3f} {phases['inverse']:>8.3f} "
              f"{phases['precondition']:>8.3f} {phases['update']:>7.3f} "
              f"{100 * phases['inverse'] / kfac_seconds:>6.1f} {peak_memory_mib(device):>9.0f}")


if __name__ == "__main__":
    main()
