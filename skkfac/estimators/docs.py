"""Parameter and attribute descriptions shared by the estimators' docstrings."""

COMMON_PARAMETERS = """\
    hidden_layer_sizes : tuple of int, default=(100,)
        (Regressor and classifier.) Width of each hidden layer; ``()`` is a linear model.
    activation : {'tanh', 'relu', 'logistic', 'identity'}, default='tanh'
        Activation after every hidden layer (the study used tanh). Weights are
        initialised Xavier/Glorot-uniform, biases at zero.
    solver : {'kfac', 'sgd'}, default='kfac'
        ``'kfac'``: Kronecker-factored natural gradient (:class:`skkfac.KFAC`);
        ``'sgd'``: stochastic gradient descent with (Nesterov) momentum.
    alpha : float, default=0.0
        L2 penalty ``alpha/2 * sum(W**2)`` over the weight matrices (not the biases),
        added to the mean loss. Note: scikit-learn's MLP divides it by the batch size.
    batch_size : int or 'auto', default='auto'
        Samples per mini-batch; 'auto' is ``min(1000, n)`` for K-FAC (which wants large
        batches) and ``min(200, n)`` for SGD.
    artificial_batch_size : int or None, default=None
        Samples per update: gradients (and K-FAC's curvature statistics) of consecutive
        mini-batches are summed until this many samples are reached, then one update is
        made. Must be ``>= batch_size``. ``None``: one update per mini-batch.
    learning_rate_init : float or None, default=None
        Learning rate; ``None`` uses the solver's default (1.0 for K-FAC, a multiplier of
        the adaptive step; 0.01 for SGD).
    momentum : float, default=0.9
        SGD momentum.
    nesterovs_momentum : bool, default=True
        Use Nesterov's momentum (SGD).
    damping : float, default=0.1
        K-FAC Tikhonov damping λ relative to the average eigenvalue of the Kronecker
        factors at the first update (so it does not depend on the scale of the loss or
        the data); initial value when ``adapt_damping``.
    damping_scheme : {'tikhonov', 'eigen', 'ekfac', 'max_norm'}, default='tikhonov'
        K-FAC damping: factored Tikhonov, exact Tikhonov in the eigenbasis, EKFAC (the
        eigenbasis with eigenvalues re-estimated from per-example gradients), or the
        study's divide-by-max normalisation. See :class:`skkfac.KFAC`.
    adapt_damping : bool, default=True
        Adapt λ by the Levenberg–Marquardt rule (K-FAC).
    adaptive_step : bool, default=True
        K-FAC: choose the step size and the momentum of every update by minimising the
        exact (Gauss–Newton) quadratic model in the plane of the K-FAC direction and the
        previous step (Martens & Grosse 2015, §7); ``learning_rate_init`` then scales that
        step (1 = the model's optimum). ``False``: fixed learning rate, and momentum from
        the running-average schedule as in the study.
    kl_clip : float or None, default=None
        Bound on the Fisher norm of each K-FAC update when ``adaptive_step=False``.
    stat_decay : {'linear', 'martens'}, default='linear'
        Running-average schedule of K-FAC's Kronecker factors.
    momentum_rate : float, default=1.0
        K-FAC ``m_rate`` of the linear schedule ``α_k = min(0.05·k·m_rate, m_max)``.
    momentum_max : float, default=0.6
        K-FAC ``m_max``; ``α_k`` is also the momentum of the update, as in the study.
    inv_update_freq : int, default=10
        Recompute K-FAC's inverses every this many updates.
    fisher : {'sampled', 'exact', 'empirical'}, default='sampled'
        How K-FAC estimates ``G``: targets sampled from the model (true Fisher), the
        exact expectation (one backward per output), or the labels (empirical Fisher).
    curvature_batch_size : int or None, default=256
        Estimate K-FAC's factors (and its quadratic model) on the first this many samples
        of each update's batch, artificial batches included; ``None``: all of them. The
        default keeps the curvature's cost independent of the batch size.
    max_iter : int, default=200
        Maximum number of epochs.
    max_time : float or None, default=None
        Budget of training seconds (evaluation excluded); training stops at the first
        mini-batch that ends past it.
    tol : float, default=1e-4
        Minimum improvement of the loss (or validation score) per epoch that counts.
    n_iter_no_change : int, default=10
        Epochs without an improvement of ``tol`` after which training stops.
    early_stopping : bool, default=False
        Hold out ``validation_fraction`` of the data, stop on its score, and restore the
        best weights.
    validation_fraction : float, default=0.1
        Share of the training data held out when ``early_stopping``.
    shuffle : bool, default=True
        Shuffle the samples every epoch.
    eval_every : int or None, default=None
        Evaluate ``eval_set`` every this many updates (learning curve against updates).
    eval_interval : float or None, default=None
        Evaluate ``eval_set`` every this many training seconds. With neither
        ``eval_every`` nor ``eval_interval``, evaluation happens once per epoch.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling, the validation split and K-FAC's sampling.
    verbose : bool, default=False
        Print progress (one line per epoch and per evaluation).
    warm_start : bool, default=False
        Continue from the previous fit's weights and solver state.
    device : str, default='auto'
        'auto' (CUDA when available, else CPU), 'cpu', 'cuda', 'cuda:1', ...
    dtype : {'float32', 'float64'}, default='float32'
        Floating-point type of the network and of the computations."""

FITTED_ATTRIBUTES = """\
    model_ : torch.nn.Sequential
        The trained network (in eval mode, on ``device_``).
    solver_ : skkfac.KFAC or skkfac.solvers.NesterovSGD
        The solver with its state (factors, momentum), used by ``warm_start`` and
        ``partial_fit``.
    device_ : torch.device
        Where the network lives.
    history_ : pandas.DataFrame
        One row per evaluation: ``update``, ``epoch``, ``samples``, ``time`` (training
        seconds), ``train_loss`` (mean over the batches since the previous row),
        ``eval_loss`` and ``eval_score`` (NaN without ``eval_set``) and cumulative
        per-phase seconds ``time_<phase>`` for solvers that have phases.
    loss_curve_ : list of float
        Mean training loss of each epoch.
    loss_ : float
        Last entry of ``loss_curve_``.
    best_loss_ : float or None
        Best epoch loss (``None`` with early stopping).
    validation_scores_ : list of float or None
        Per-epoch scores on the early-stopping split.
    best_validation_score_ : float or None
    n_iter_ : int
        Epochs completed.
    n_updates_ : int
        Parameter updates made.
    t_ : int
        Samples seen.
    train_time_ : float
        Training seconds (evaluation excluded).
    n_rejected_updates_ : int
        Updates undone because the loss diverged after them.
    stop_reason_ : str
        'max_iter', 'max_time', 'converged' or 'diverged' ('' after ``partial_fit``).
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when ``X`` had string feature names.
    n_outputs_ : int
        Width of the output layer."""
