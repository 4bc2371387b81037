"""The study's K-FAC: its update rule and its tuned hyperparameters, in one place.

The reference study (K. B. Ulbæk, *Second order optimization of neural networks with
Kronecker factored approximate curvature*, 2022) ran K-FAC with a fixed learning rate, the
divide-by-max normalisation of ``A``, ``G`` and the update, no Tikhonov damping, factors
recomputed from the whole batch and inverted at every update, and a running average of the
normalised directions as momentum. :data:`STUDY_KFAC` is that rule as estimator
parameters; :data:`STUDY_TABLES` holds the best hyperparameters its Bayesian optimisation
found (Tables 1-3); :func:`study_parameters` combines the two for one problem.

Everything in skkfac that claims to run "the study's K-FAC" (the benchmarks, the GPU
check, the guide) takes it from here. Which of these choices matter, and by how much, is
measured in :doc:`/user_guide/damping` ("The study's configuration").

Examples
--------
>>> from skkfac import KFACAutoencoder
>>> from skkfac.study import study_parameters
>>> params = study_parameters("mnist_ae")
>>> params["learning_rate_init"], params["batch_size"], params["inv_update_freq"]
(0.1809, 9543, 1)
>>> ae = KFACAutoencoder(encoder_layer_sizes=(1000, 500, 250, 30), **params)
"""

from __future__ import annotations

from types import MappingProxyType

#: The study's update rule, as parameters of the estimators (and of :class:`skkfac.KFAC`,
#: where ``learning_rate_init`` is ``lr``). Why each differs from skkfac's defaults:
#:
#: * ``damping_scheme='max_norm'``, ``adaptive_step=False``: the study divided ``A``,
#:   ``G`` and each layer's update by their largest entry and took a fixed step ``lr``;
#: * ``damping=0.0``, ``adapt_damping=False``: it gave up on Tikhonov damping. The inverse
#:   is still shifted by the smallest value a float32 Cholesky factorisation needs
#:   (:func:`skkfac.curvature.precision_floor`, about ``1e-7 · √n · tr A``): the
#:   normalised input factor of MNIST is singular (border pixels are always zero), where
#:   the study added tiny noise to the first layer's ``A`` instead;
#: * ``inv_update_freq=1``, ``curvature_batch_size=None``: the factors come from every
#:   example of the batch and are inverted at every update, after the batch's own
#:   statistics are folded in. An undamped inverse aims the max-normalised step into
#:   the near-null directions of ``A`` (683 of the 784 eigenvalues of MNIST's normalised
#:   ``A₀`` are below 0.1), so a coordinate step of 0.18 is small in function space; stale
#:   or 128-row factors do not know those directions and the same step blows up;
#: * ``momentum_type='average'``: the step is ``lr`` times a running average
#:   ``v ← α v + (1 − α) Δ`` of the normalised directions, with ``α`` the factors' decay
#:   (the study's eq. 54), so it never exceeds ``lr`` per coordinate;
#: * ``rejection_ratio=None``: no test undoes a step after which the loss grew (only a
#:   non-finite loss is undone);
#: * ``precondition_precision='full'``: the study computed in float32;
#: * ``alpha=0.0``: it trained without an L2 penalty (the estimators' ``'auto'`` adds one).
STUDY_KFAC = MappingProxyType({
    "damping_scheme": "max_norm", "adaptive_step": False, "damping": 0.0,
    "adapt_damping": False, "inv_update_freq": 1, "curvature_batch_size": None,
    "momentum_type": "average", "stat_decay": "linear", "rejection_ratio": None,
    "precondition_precision": "full", "alpha": 0.0,
})

#: The best configuration of each solver in the study's Tables 1-3 (estimator parameter
#: names), its test loss, and the training budget it was tuned for (on a GTX 980).
#: ``'regression'`` is the UCI CT-slice data; its values need not suit other data sets.
STUDY_TABLES = MappingProxyType({
    "mnist_ae": {
        "table": "Table 1", "budget": "10 s on a GTX 980, 2 repeats",
        "kfac": {"loss": 0.0113, "learning_rate_init": 0.1809, "batch_size": 9543,
                 "momentum_rate": 0.5279, "momentum_max": 0.6066},
        "sgd": {"loss": 0.0182, "learning_rate_init": 1.2967, "batch_size": 470,
                "momentum": 0.6931}},
    "regression": {
        "table": "Table 2", "budget": "5 s on a GTX 980, 4 repeats, CT slices",
        "kfac": {"loss": 0.00013, "learning_rate_init": 0.0392, "batch_size": 13869,
                 "momentum_rate": 1.1173, "momentum_max": 0.7309},
        "sgd": {"loss": 0.0014, "learning_rate_init": 0.0064, "batch_size": 3523,
                "momentum": 0.99}},
    "cifar10": {
        "table": "Table 3", "budget": "10 s on a GTX 980, 2 repeats",
        "kfac": {"loss": 1.5965, "learning_rate_init": 0.2731, "batch_size": 8111,
                 "momentum_rate": 1.9215, "momentum_max": 0.349},
        "sgd": {"loss": 1.525, "learning_rate_init": 0.011, "batch_size": 721,
                "momentum": 0.971}},
})


def study_parameters(problem: str, solver: str = "kfac") -> dict:
    """Estimator parameters of the study's best ``solver`` on ``problem``.

    Parameters
    ----------
    problem : {'mnist_ae', 'regression', 'cifar10'}
        The study's problem (Table 1, 2 or 3).
    solver : {'kfac', 'sgd'}, default='kfac'
        ``'kfac'``: the best K-FAC hyperparameters with the study's update rule
        (:data:`STUDY_KFAC`); ``'sgd'``: the best SGD-Nesterov hyperparameters.

    Returns
    -------
    dict
        Keyword arguments for :class:`~skkfac.KFACAutoencoder`,
        :class:`~skkfac.KFACRegressor` or :class:`~skkfac.KFACClassifier`, with
        ``solver`` set.
    """
    if problem not in STUDY_TABLES:
        raise ValueError(f"The study has no problem {problem!r}; choose from "
                         f"{sorted(STUDY_TABLES)}.")
    if solver not in ("kfac", "sgd"):
        raise ValueError(f"The study tuned 'kfac' and 'sgd', got solver={solver!r}.")
    tuned = {k: v for k, v in STUDY_TABLES[problem][solver].items() if k != "loss"}
    rule = dict(STUDY_KFAC) if solver == "kfac" else {"nesterovs_momentum": True}
    return {"solver": solver, **rule, **tuned}
