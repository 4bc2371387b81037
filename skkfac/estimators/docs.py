"""The estimators' parameter documentation, generated per estimator.

The estimators' own parameters are described here once; the solvers' options come from
their :class:`~skkfac.solvers.spec.Hyperparameter` declarations. :func:`document`
writes, into an estimator's docstring, the entries of exactly the parameters of its
``__init__``, in signature order, and the ``sample_weight`` entry of its ``fit`` and
``partial_fit``.
"""

from __future__ import annotations

import inspect
import textwrap

from skkfac.solvers.spec import (
    PARAMETERS_MARKER,
    SOLVERS,
    constraint_type,
    estimator_parameters,
    numpydoc_entry,
)

#: Marker replaced by :data:`FITTED_ATTRIBUTES`.
ATTRIBUTES_MARKER = "    <fitted attributes>\n"
#: Marker, in ``fit`` and ``partial_fit`` docstrings, replaced by :data:`SAMPLE_WEIGHT`.
SAMPLE_WEIGHT_MARKER = "        <sample_weight>\n"
#: The ``sample_weight`` entry of the fitting methods (indented for a method).
SAMPLE_WEIGHT = textwrap.indent(numpydoc_entry(
    "sample_weight", "array-like of shape (n_samples,) or None, default=None",
    "Non-negative weights of the samples: training minimises the weighted mean loss, so "
    "an integer weight counts a sample that many times and a weight of 0 leaves it out. "
    "The gradient, K-FAC's curvature factors and quadratic model, the epoch losses and "
    "the early-stopping split's score are all weighted (:ref:`sample-weights`). "
    "``None``: every weight is 1."), "    ")

#: ``name: (type and default line, description)`` of the estimators' own parameters.
OWN_PARAMETERS = {
    "hidden_layer_sizes": (
        "int or tuple of int, default=(100,)",
        "Width of each hidden layer (an int is one layer); ``()`` is a linear model."),
    "encoder_layer_sizes": (
        "int or tuple of int, default=(1000, 500, 250, 30)",
        "Widths of the encoder's layers (an int is one layer); the last one is the code "
        "size. The decoder mirrors them."),
    "activation": (
        "{'tanh', 'relu', 'logistic', 'identity'}, default='tanh'",
        "Activation after every hidden layer (the study used tanh). Weights are "
        "initialised Xavier/Glorot-uniform, biases at zero."),
    "solver": (None, None),  # generated from the registry
    "alpha": (
        "float, 'auto' or 'prior', default='auto'",
        "L2 penalty ``alpha/2 * sum(W**2)`` over the weight matrices (not the biases), "
        "added to the mean loss. ``'auto'``: the penalty of a Gaussian prior N(0, 20) on "
        "every weight given the training rows, which fades as they grow: ``1/(20 n)`` "
        "for classifiers, ``σ²/(10 n d)`` for squared error with ``d`` outputs of mean "
        "variance ``σ²`` (about 3e-4 for 300 rows of a standardised target, 2e-10 for "
        "MNIST's autoencoder); 0 in ``partial_fit``, which does not know ``n``. "
        "``KFACRegressor`` then asks the data: after a first fit with an early-stopping "
        "split, the evidence approximation (MacKay 1992) estimates the penalty from the "
        "noise left and the weights' size (``evidence_alpha_``); when that is at least 5 "
        "times the prior's (noisy targets), the network is trained again from its initial "
        "weights with it, within what is left of ``max_time``/``max_wall_time`` (a second "
        "run the budget cuts short is dropped). ``'prior'``: the prior's penalty alone, "
        "one training run. The value used is ``alpha_``. Note: scikit-learn's MLP "
        "divides ``alpha`` by the batch size."),
    "batch_size": (
        "int or 'auto', default='auto'",
        None),  # generated: the per-solver 'auto' sizes
    "artificial_batch_size": (
        "int or None, default=None",
        "Samples per update: gradients (and K-FAC's curvature statistics) of consecutive "
        "mini-batches are summed until this many samples are reached, then one update is "
        "made. Must be ``>= batch_size``; with ``batch_size='auto'`` the mini-batches are "
        "made no larger than it. ``None``: one update per mini-batch, except that "
        "K-FAC makes updates of at least 128 samples (its curvature is estimated on "
        "them): smaller mini-batches are accumulated, with a warning."),
    "max_iter": ("int, default=200", "Maximum number of epochs."),
    "max_time": (
        "float or None, default=None",
        "Budget of training seconds (evaluation excluded); training stops at the first "
        "mini-batch that ends past it. See ``max_wall_time`` to bound the whole call."),
    "max_wall_time": (
        "float or None, default=None",
        "Budget of wall-clock seconds for the whole ``fit``/``partial_fit`` call: "
        "validation, setup, training, evaluations of ``eval_set`` and callbacks. Training "
        "stops at the first mini-batch or evaluation that ends past it (about one update "
        "and one evaluation late at most); ``stop_reason_`` is then 'max_wall_time'."),
    "tol": (
        "float, default=1e-4",
        "Minimum improvement of the loss (or validation score) per epoch that counts."),
    "n_iter_no_change": (
        "int, default=10",
        "Epochs without an improvement of ``tol`` after which training stops."),
    "early_stopping": (
        "'auto' or bool, default='auto'",
        "Hold out ``validation_fraction`` of the data, stop on its score, and restore the "
        "best weights (a fit stopped by ``max_time`` keeps its last weights when they "
        "score better). ``'auto'``: on for K-FAC, whose fast fits overfit small noisy "
        "data sets otherwise; off for SGD and Adam (scikit-learn's default); off too "
        "when the split would hold fewer than 10 samples, when the classes cannot be "
        "stratified into it (a class of one sample, more classes than held-out rows) "
        "or under data-parallel training; "
        "``do_early_stopping_`` says what a fit did. ``partial_fit`` never holds data "
        "out."),
    "validation_fraction": (
        "float, default=0.1",
        "Share of the training data held out when ``early_stopping``."),
    "scoring": (
        "'auto', 'loss', str, callable or None, default='auto'",
        "What early stopping judges the held-out split by (higher is better): "
        "``'loss'``, the negative validation loss (cross-entropy or squared error, as "
        "``HistGradientBoosting*``'s default); ``None``, the estimator's ``score`` "
        "(accuracy, R², as scikit-learn's MLPs); a scikit-learn scorer name (such as "
        "``'f1_macro'``) or a callable ``scorer(estimator, X, y)``; ``'auto'``, the "
        "loss for the classifier (in nats whatever the data; stopping on a small "
        "split's accuracy lost accuracy) and the score for the regressor and the "
        "autoencoder (R² does not depend on the targets' scale, where the squared "
        "error, and so ``tol``, does; held-out targets that are all equal have no R², "
        "and the loss is used). ``validation_scores_`` holds the values."),
    "shuffle": ("bool, default=True", "Shuffle the samples every epoch."),
    "eval_every": (
        "int or None, default=None",
        "Evaluate ``eval_set`` every this many updates (learning curve against updates)."),
    "eval_interval": (
        "float or None, default=None",
        "Evaluate ``eval_set`` every this many training seconds. With neither "
        "``eval_every`` nor ``eval_interval``, evaluation happens once per epoch."),
    "random_state": (
        "int, RandomState instance or None, default=None",
        "Seeds initialisation, shuffling, the validation split and K-FAC's sampling."),
    "verbose": (
        "bool, default=False",
        "Log progress (one line per epoch and per evaluation) to the ``'skkfac'`` logger "
        "(:class:`skkfac.callbacks.LogProgress`). When logging is not configured, the "
        "lines are printed to standard output."),
    "callbacks": (
        "list of callback objects or None, default=None",
        "Objects whose ``on_fit_begin``, ``on_update``, ``on_evaluate``, ``on_epoch_end`` "
        "and ``on_fit_end`` methods (any of them) are called during training with a "
        ":class:`skkfac.callbacks.FitEvent`: progress bars, checkpoints, extra metrics. "
        "See :mod:`skkfac.callbacks`."),
    "warm_start": (
        "bool, default=False",
        "Continue from the previous fit's weights and solver state. The network's shape "
        "(layer sizes, ``activation``, ``dtype``) and number of outputs cannot change "
        "then: ``fit`` raises a ValueError; set ``warm_start=False`` to train a new one."),
    "device": (
        "str or torch.device, default='auto'",
        "'auto' (the current CUDA device when available, else the CPU), 'cpu', 'cuda', "
        "'cuda:1'..., or 'cuda:worker' (one GPU per worker process of a parallel search). "
        "Changing it after fit moves the fitted model at the next predict or fit; see "
        "the user guide's GPUs page."),
    "dtype": (
        "{'float32', 'float64'}, default='float32'",
        "Floating-point type of the network and of the computations."),
    "n_threads": (
        "int or None, default=None",
        "CPU threads torch uses during ``fit``, ``partial_fit``, ``predict``, "
        "``transform`` and ``score`` (``torch.set_num_threads``, restored when the call "
        "returns). ``None`` means 1, which is fastest for small networks and on shared "
        "machines; ``-1`` means every available CPU, ``-2`` all but one, as scikit-learn's "
        "``n_jobs``. Threads pay off for wide layers and large batches on an idle CPU."),
}

FITTED_ATTRIBUTES = """\
    model_ : torch.nn.Sequential
        The trained network (in eval mode, on ``device_``).
    solver_ : skkfac.solvers.Solver
        The solver with its state (factors, momentum, moments), used by ``warm_start``
        and ``partial_fit``.
    device_ : torch.device
        Where the network lives.
    alpha_ : float
        The L2 penalty trained with (``alpha``, ``'auto'`` resolved at the first fit).
    evidence_alpha_ : float or None
        The penalty the evidence approximation asked for after the first training run
        (``alpha='auto'``, see ``alpha``); ``alpha_`` when the network was trained again
        with it. ``None`` when it was not estimated.
    history_ : pandas.DataFrame
        One row per evaluation: ``update``, ``epoch``, ``samples``, ``time`` (training
        seconds), ``train_loss`` (mean over the batches since the previous row),
        ``eval_loss`` and ``eval_score`` (NaN without ``eval_set``), the last update's
        ``damping``, ``rho``, ``step_size`` and ``momentum`` (NaN when the solver does not
        report them) and cumulative per-phase seconds ``time_<phase>`` for solvers that
        have phases.
    loss_curve_ : list of float
        Mean training loss of each epoch, over that epoch's samples.
    do_early_stopping_ : bool
        Whether the last ``fit`` held out a validation split (``early_stopping``
        resolved; False after ``partial_fit``).
    loss_ : float
        Last entry of ``loss_curve_``.
    best_loss_ : float or None
        Best epoch loss (``None`` with early stopping).
    validation_scores_ : list of float or None
        Per-epoch scores on the early-stopping split.
    best_validation_score_ : float or None
        Best of ``validation_scores_`` (``None`` without early stopping).
    n_iter_ : int
        Epochs completed.
    n_updates_ : int
        Updates made (calls of the solver's ``step``, rejected ones included).
    t_ : int
        Samples seen.
    train_time_ : float
        Training seconds (evaluation excluded).
    n_rejected_updates_ : int
        Updates undone: by the solver (its step report said so) or by the trainer
        because the loss diverged after them.
    stop_reason_ : str
        'max_iter', 'max_time', 'max_wall_time', 'converged' or 'diverged' (see the
        user guide's Reliability page); 'max_iter' after a complete ``partial_fit`` epoch.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of str
        Only when ``X`` had string feature names.
    n_outputs_ : int
        Width of the output layer.
"""


def _solver_entry(parameter) -> tuple[str, str]:
    """Type line and description of a parameter declared by solvers."""
    type_line = (f"{constraint_type(parameter.constraints)}, "
                 f"default={parameter.default!r}")
    declarations = parameter.declarations
    if parameter.per_solver_default:
        text = "``None``: the chosen solver's default. " + " ".join(
            f"``solver={solver!r}``: {hyper.doc.rstrip('.')} (default {hyper.default!r})."
            for solver, hyper in declarations.items())
    else:
        hyper = next(iter(declarations.values()))
        solvers = " or ".join(f"``solver={s!r}``" for s in declarations)
        text = hyper.doc if set(declarations) == set(SOLVERS) else (
            f"{hyper.doc} Only used with {solvers}.")
    return type_line, text


def _summary(cls) -> str:
    """The first sentence of a class's docstring, without its final period."""
    return cls.__doc__.strip().split("\n\n")[0].replace("\n", " ").split(". ")[0].rstrip(".")


def _own_entry(name: str) -> tuple[str, str]:
    type_line, text = OWN_PARAMETERS[name]
    if name == "solver":
        options = ", ".join(repr(s) for s in SOLVERS)
        type_line = "{" + options + "}, default='kfac'"
        text = " ".join(
            f"``{solver!r}``: {_summary(cls)} (:class:`~skkfac.solvers.{cls.__name__}`)."
            for solver, cls in SOLVERS.items())
        text += " The parameters below that name a solver only apply to it."
    if name == "batch_size":
        sizes = ", ".join(
            (cls.auto_batch_size_rule or f"``min({cls.auto_batch_size}, n_samples)``")
            + f" for {name!r}" for name, cls in SOLVERS.items())
        text = f"Samples per mini-batch; 'auto' is {sizes}."
    return type_line, text


def parameter_entries(cls) -> str:
    """Numpydoc entries of the parameters of ``cls.__init__``, in signature order."""
    solver_parameters = estimator_parameters()
    entries = []
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        if name in OWN_PARAMETERS:
            type_line, text = _own_entry(name)
        elif name in solver_parameters:
            type_line, text = _solver_entry(solver_parameters[name])
        else:
            raise ValueError(f"{cls.__name__}: no documentation for parameter {name!r}.")
        entries.append(numpydoc_entry(name, type_line, text))
    return "".join(entries)


def document(cls):
    """Class decorator: fill an estimator docstring's parameter and attribute markers."""
    doc = cls.__doc__
    if PARAMETERS_MARKER not in doc:
        raise ValueError(f"{cls.__name__}'s docstring has no parameters marker.")
    doc = doc.replace(PARAMETERS_MARKER, parameter_entries(cls))
    cls.__doc__ = doc.replace(ATTRIBUTES_MARKER, FITTED_ATTRIBUTES)
    for name in ("fit", "partial_fit"):
        method = vars(cls)[name]
        if SAMPLE_WEIGHT_MARKER not in method.__doc__:
            raise ValueError(f"{cls.__name__}.{name}'s docstring has no sample_weight marker.")
        method.__doc__ = method.__doc__.replace(SAMPLE_WEIGHT_MARKER, SAMPLE_WEIGHT)
    return cls
