"""Why the study's K-FAC rule stops as 'diverged' in the GPU check: its batch losses."""
import warnings

import numpy as np

from benchmarks.gpu_check import STUDY_KFAC
from benchmarks.problems import get_problem

for name in ("mnist_ae", "regression"):
    problem = get_problem(name)
    data = problem.load(".gpu_data")
    params = {k: v for k, v in problem.study["kfac"].items() if k != "loss"}
    for label, extra in (("study rule", STUDY_KFAC), ("defaults", {})):
        est = problem.make_estimator("kfac", max_time=10, device="cuda", random_state=0,
                                     **params, **extra) if label == "study rule" else \
            problem.make_estimator("kfac", max_time=10, device="cuda", random_state=0,
                                   batch_size=params["batch_size"])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if data.y_full is None:
                est.fit(data.X_full)
            else:
                est.fit(data.X_full, data.y_full)
        curve = np.array(est.loss_curve_)
        print(f"== {name} / {label}: stop_reason_={est.stop_reason_}, n_updates_={est.n_updates_}")
        print("   first 15 batch losses:", np.array2string(curve[:15], precision=4))
        for w in caught:
            if "diverg" in str(w.message).lower() or "loss" in str(w.message).lower():
                print("   warning:", str(w.message)[:400])
        hist = est.history_
        cols = [c for c in ("update", "train_loss", "damping", "rho", "accepted") if c in hist]
        print(hist[cols].head(15).to_string())
