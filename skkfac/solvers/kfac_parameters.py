"""The constructor parameters of :class:`skkfac.KFAC`, each declared and described once.

:data:`HYPERPARAMETERS` are the options the estimators offer too (their constraints,
defaults and parameter documentation are generated from them), and
:data:`INTERNAL_HYPERPARAMETERS` those of the optimizer used on its own. Each carries
``doc``, the sentence of the estimators' documentation, and ``solver_doc``, the longer
description of K-FAC's own docstring. :data:`OTHER_PARAMETERS` describes the rest of the
constructor: the network, the loss, the L2 penalty, the seed and the data-parallel
plumbing. :class:`~skkfac.KFAC`'s parameter documentation is written from both, in the
order of its signature.
"""

from __future__ import annotations

from numbers import Integral, Real

from sklearn.utils._param_validation import Interval, StrOptions

from skkfac.curvature import DAMPING_SCHEMES, STAT_DECAY_SCHEDULES
from skkfac.curvature.precision import PRECONDITION_PRECISIONS
from skkfac.solvers.mixed_precision import PRECISION
from skkfac.solvers.spec import Hyperparameter

FISHER_TYPES = ("sampled", "exact", "empirical")

HYPERPARAMETERS = (
    Hyperparameter(
        "lr", 1.0, [Interval(Real, 0, None, closed="neither")],
        "with ``adaptive_step``, a multiplier of the step that minimises the "
        "quadratic model (1 = that optimum); otherwise the step size.",
        estimator_name="learning_rate_init",
        solver_doc="Learning rate. With ``adaptive_step`` it multiplies the step that "
        "minimises the quadratic model (``lr=1``: that optimum). Otherwise it is the step "
        "size; with ``damping_scheme='tikhonov'`` or ``'eigen'`` the Fisher has the "
        "curvature scale of the loss and ``lr=1`` is a full (damped) Newton-like step."),
    Hyperparameter(
        "damping", 0.1, [Interval(Real, 0, None, closed="left")],
        "K-FAC Tikhonov damping λ relative to the average eigenvalue of the Kronecker "
        "factors at the first update (so it does not depend on the scale of the loss "
        "or the data); initial value when ``adapt_damping``.",
        solver_doc="Tikhonov damping ``λ`` *relative to the curvature's scale*: the "
        "absolute damping is ``damping · s`` with ``s`` the mean over layers of "
        "``(tr A / dim A)(tr G / dim G)`` (the average eigenvalue of ``A ⊗ G``) measured "
        "at the first update, so the same value suits losses and data of any scale; the "
        "Levenberg–Marquardt rule then adapts it. Initial value when ``adapt_damping``. "
        "For ``'max_norm'`` it is the shift added to the max-normalised factors."),
    Hyperparameter(
        "damping_scheme", "tikhonov", [StrOptions(set(DAMPING_SCHEMES))],
        "K-FAC damping: factored Tikhonov, exact Tikhonov in the eigenbasis, EKFAC (the "
        "eigenbasis with eigenvalues re-estimated from per-example gradients), or the "
        "study's divide-by-max normalisation. See :class:`skkfac.KFAC`.",
        solver_doc="``'tikhonov'``: factored Tikhonov ``(A + π√λ I) ⊗ (G + √λ/π I)``; "
        "``'eigen'``: exact ``A ⊗ G + λ I`` in the factors' eigenbasis; ``'ekfac'``: EKFAC "
        "(George et al. 2018), the eigenbasis of ``A ⊗ G`` with the eigenvalues "
        "re-estimated every update from the per-example gradients, plus ``λ`` "
        "(:mod:`skkfac.curvature.ekfac`); ``'max_norm'``: the study's divide-by-max "
        "normalisation of A, G and the update."),
    Hyperparameter(
        "adapt_damping", True, ["boolean"],
        "Adapt λ by the Levenberg–Marquardt rule (K-FAC).",
        solver_doc="Levenberg–Marquardt adaptation of ``λ`` from the reduction ratio "
        "``ρ`` of the curvature batch's loss change against the change predicted by the "
        "*undamped* quadratic model on the same examples (exact Fisher–vector products), "
        "every ``damping_adapt_interval`` updates (Martens & Grosse 2015, §6.5; "
        "kfac-jax)."),
    Hyperparameter(
        "adaptive_step", True, ["boolean"],
        "K-FAC: choose the step size and the momentum of every update by minimising "
        "the exact (Gauss–Newton) quadratic model in the plane of the K-FAC direction "
        "and the previous step (Martens & Grosse 2015, §7). ``False``: fixed learning "
        "rate, and momentum from the running-average schedule as in the study.",
        solver_doc="Choose the step size and the momentum of every update by minimising "
        "the exact (Gauss–Newton) quadratic model ``M(δ) = ∇ᵀδ + ½ δᵀ(F + λI)δ`` in the "
        "plane of the K-FAC direction and the previous step (Martens & Grosse 2015, §7), "
        "on the curvature batch. ``False``: fixed ``lr`` and momentum, as in the study."),
    Hyperparameter(
        "kl_clip", None, [None, Interval(Real, 0, None, closed="neither")],
        "Bound on the Fisher norm of each K-FAC update when ``adaptive_step=False``.",
        solver_doc="With ``adaptive_step=False``: scale each update so that its Fisher "
        "norm ``lr² ΔᵀFΔ`` stays below ``kl_clip`` (Ba et al. 2017). ``None`` disables "
        "the clip."),
    Hyperparameter(
        "stat_decay", "linear", [StrOptions(set(STAT_DECAY_SCHEDULES))],
        "Running-average schedule of K-FAC's Kronecker factors.",
        solver_doc="Running-average schedule of ``A`` and ``G`` (see "
        ":mod:`skkfac.curvature.schedules`)."),
    Hyperparameter(
        "momentum_rate", 1.0, [Interval(Real, 0, None, closed="neither")],
        "K-FAC ``m_rate`` of the linear schedule ``α_k = min(0.05·k·m_rate, m_max)``.",
        solver_doc="``m_rate`` of the ``'linear'`` schedule "
        "``α_k = min(0.05 k m_rate, m_max)``."),
    Hyperparameter(
        "momentum_max", 0.6, [Interval(Real, 0, 1, closed="left")],
        "K-FAC ``m_max``; ``α_k`` is also the momentum of the update, as in the study.",
        solver_doc="``m_max`` of the ``'linear'`` schedule; it also caps the "
        "``'martens'`` schedule."),
    Hyperparameter(
        "momentum_type", "heavy_ball", [StrOptions({"heavy_ball", "average"})],
        "Momentum of K-FAC's fixed-step updates (``adaptive_step=False``): "
        "``'heavy_ball'`` ``v ← αv + Δ``, or the study's running average "
        "``v ← αv + (1 − α)Δ`` of the directions (:mod:`skkfac.study`).",
        solver_doc="With ``adaptive_step=False``, the step is ``lr · v`` with "
        "``'heavy_ball'``: ``v ← μ v + Δ``; ``'average'``: ``v ← μ v + (1 − μ) Δ``, the "
        "study's running average of the directions, which never exceeds the largest "
        "direction (with ``'max_norm'``, ``lr`` per coordinate)."),
    Hyperparameter(
        "inv_update_freq", 10, [Interval(Integral, 1, None, closed="left")],
        "Recompute K-FAC's inverses every this many updates.",
        solver_doc="Refresh the inverses every this many updates (and after a damping "
        "change of more than a factor 2 or a rejected update)."),
    Hyperparameter(
        "fisher", "sampled", [StrOptions(set(FISHER_TYPES))],
        "How K-FAC estimates ``G``: targets sampled from the model (true Fisher), the "
        "exact expectation (one backward per output), or the labels (empirical "
        "Fisher).",
        solver_doc="``'sampled'``: one target drawn per example from the model (true "
        "Fisher, Monte Carlo); ``'exact'``: the expectation over the model's distribution "
        "computed in closed form, one backward pass per output unit (cheap for few "
        "outputs); ``'empirical'``: the training labels (empirical Fisher, for comparison "
        "only)."),
    Hyperparameter(
        "curvature_batch_size", 128, [None, Interval(Integral, 1, None, closed="left")],
        "Estimate K-FAC's factors (and its quadratic model) on the first this many "
        "samples of each update's batch, artificial batches included; ``None``: all "
        "of them. Keeps the curvature's cost independent of the batch size.",
        solver_doc="Estimate ``A``, ``G`` and the quadratic model on the first this many "
        "examples of each (artificial) batch; the gradient always uses all of them. Makes "
        "the cost of the curvature independent of the batch size."),
    Hyperparameter(
        "precondition_precision", "auto", [StrOptions(set(PRECONDITION_PRECISIONS))],
        "Precision of the products of K-FAC's factor inverses with the gradients: "
        "the curvature's own, bfloat16, or ``'auto'`` (bfloat16 for a float32 "
        "network on hardware with bfloat16 matrix units, where they are faster; the "
        "step is still judged in full precision).",
        solver_doc="Precision of the products of the gradients with the factor inverses, "
        "the largest fixed cost of an update. ``'full'``: the curvature's precision "
        "(float32, float64 for a float64 network). ``'bfloat16'``: operands rounded to "
        "bfloat16, sums in float32: faster products on CPUs with bfloat16 matrix "
        "instructions (AVX512-BF16, AMX) and on tensor-core GPUs, slower elsewhere "
        "(measurements in ``docs/user_guide/kfac.rst``). ``'auto'``: bfloat16 for a "
        "float32 network on such hardware, else full (:attr:`precondition_dtype` says "
        "which). The direction then differs by a few % per layer, but the quadratic "
        "model, ``ρ`` and the rejection test are computed for the direction actually "
        "taken, in full precision (``docs/user_guide/kfac.rst``, \"What an update "
        "costs\")."),
    PRECISION,
    Hyperparameter(
        "rejection_ratio", 2.0, [None, Interval(Real, 1, None, closed="left")],
        "Undo a K-FAC update after which the loss on the curvature rows is more than "
        "this multiple of the loss before it (or not finite), and raise λ threefold; "
        "``None``: undo only non-finite losses (the study's rule had no such test).",
        solver_doc="An update after which the loss *on the same curvature batch* is "
        "non-finite or more than this multiple (at least 1) of the loss before it (plus "
        "1000 machine epsilons of rounding noise) is undone at once, ``λ`` is raised "
        "threefold and the momentum forgotten (comparing on the same examples keeps the "
        "mini-batch noise out of the decision). The decision is made on the device; "
        ":meth:`step`'s report says it. ``None``: only a non-finite loss is undone, as in "
        "the study's K-FAC, which had no rejection test (a ``max_norm`` step cannot be "
        "shortened by ``λ``, so the test can stall that rule)."),
)

INTERNAL_HYPERPARAMETERS = (
    Hyperparameter(
        "damping_adapt_interval", 5, [Interval(Integral, 1, None, closed="left")],
        "Updates between two Levenberg–Marquardt adjustments of λ."),
    Hyperparameter(
        "min_damping", 1e-2, [Interval(Real, 0, None, closed="left")],
        "Lower bound of the adapted relative λ (lowered to an initial ``damping`` "
        "below it).",
        solver_doc="Lower bound of the adapted (relative) ``λ``; a smaller initial "
        "``damping`` lowers the bound to it. The quadratic model that judges a step "
        "(``ρ``) is measured on the same ``curvature_batch_size`` rows whose curvature "
        "chose it, so it is optimistic: without a floor the damping fell to ~5e-4 on the "
        "MNIST autoencoder and the held-out loss spiked 2-6x (see "
        "``docs/user_guide/damping.rst``)."),
    Hyperparameter(
        "momentum", None, [None, Interval(Real, 0, None, closed="left")],
        "Momentum of the update when ``adaptive_step=False``; ``None``: the "
        "statistics' decay α_k, as in the study.",
        solver_doc="Momentum of the update when ``adaptive_step=False``. ``None`` reuses "
        "the statistics' decay ``α_k`` as the study does."),
)

#: ``name: (type line, description)`` of the constructor's other parameters.
OTHER_PARAMETERS = {
    "model": (
        "torch.nn.Module",
        "The network; every ``nn.Linear`` in it is trained, nothing else is."),
    "loss": (
        "{'squared_error', 'cross_entropy'} or loss object",
        "Per-example loss and its predictive distribution (:mod:`skkfac.losses`)."),
    "alpha": (
        "float, default=0.0",
        "L2 penalty ``alpha/2 ‖W‖²`` on the weights: in the gradient, in the quadratic "
        "model (exactly) and in the losses ``ρ`` compares; also added to the factors' "
        "damping."),
    "random_state": ("int or None", "Seed of the target sampling."),
    "process_group": (
        "torch.distributed.ProcessGroup or None, default=None",
        "Data-parallel training (:mod:`skkfac.distributed`): when ``torch.distributed`` "
        "is initialised with several ranks, each rank accumulates its share of every "
        "batch and every cross-example sum of an update (gradients, Kronecker "
        "statistics, the quadratic model's sums, the curvature losses) and its example "
        "count are summed over this group (``None``: the default group), so every rank "
        "makes the update of the whole batch. Gradients are not reduced again when "
        "``model`` is a ``DistributedDataParallel``. Ignored in a single process."),
    "distribute_inverses": (
        "bool, default=True",
        "In a process group: invert each layer's factors and precondition its gradient "
        "on one rank (``layer mod world_size``) and broadcast the inverse and the "
        "direction; ``False``: every rank does all layers itself."),
}
