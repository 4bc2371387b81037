"""Data-parallel training over ``torch.distributed``: the reductions K-FAC needs, a launcher.

Each process (rank) holds a full copy of the network and accumulates the gradients and
Kronecker statistics of its share of every batch. Before an update the ranks add up
what they accumulated (all-reduces of the gradients, the factor sums and their example
counts), so every rank computes the update of the whole batch. The quadratic model's
sums and the losses that decide rejection and damping adaptation are summed the same
way, so all ranks take the same decisions and keep identical weights. The damped
inverses of the layers are shared out: layer ``i`` is inverted by rank
``i mod world_size`` and broadcast (``distribute_inverses=False``: every rank inverts
every layer itself). :class:`skkfac.KFAC` routes its sums through
:class:`Communicator`.

Nothing here is active in a single process: :class:`Communicator` is inactive unless
``torch.distributed`` is initialised with more than one rank, and then every method
returns at once.

:func:`fit_data_parallel` fits a ``KFAC*`` estimator over several local processes;
under ``torchrun`` an estimator fitted on each rank's shard trains data-parallel by
itself (see the user guide's *Scaling out* page).
"""

from __future__ import annotations

import itertools
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Communicator", "communication_volume", "compute_on_owners", "fit_data_parallel",
           "shard_indices"]


class Communicator:
    """The collective operations data-parallel K-FAC uses, on one process group.

    Parameters
    ----------
    process_group : torch.distributed.ProcessGroup or None, default=None
        ``None``: the default group, if ``torch.distributed`` is initialised.

    Attributes
    ----------
    active : bool
        Whether there is more than one rank to talk to; when False every method is a
        no-op (single-process behaviour and cost unchanged).
    rank, world_size : int
        This process's rank in the group and the group's size (0 and 1 when inactive).

    Examples
    --------
    >>> import torch
    >>> comm = Communicator()  # no process group initialised here
    >>> comm.active, comm.rank, comm.world_size
    (False, 0, 1)
    >>> comm.all_reduce([torch.ones(2)])  # nothing to do
    >>> comm.max(3.5)
    3.5
    """

    def __init__(self, process_group=None):
        self.group = process_group
        self.active = bool(dist.is_available() and dist.is_initialized()
                           and dist.get_world_size(process_group) > 1)
        self.rank = dist.get_rank(process_group) if self.active else 0
        self.world_size = dist.get_world_size(process_group) if self.active else 1

    def __getstate__(self):
        # A process group does not survive pickling: a copy is a single-process one.
        return {"group": None, "active": False, "rank": 0, "world_size": 1}

    def global_rank(self, group_rank: int) -> int:
        """The default group's rank of ``group_rank`` (what ``broadcast`` takes as src)."""
        if self.group is None:
            return group_rank
        return dist.get_global_rank(self.group, group_rank)

    def all_reduce(self, tensors, op=dist.ReduceOp.SUM) -> None:
        """All-reduce ``tensors`` in place, one collective per dtype (flattened together)."""
        if not self.active:
            return
        for group in _by_dtype(tensors):
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=op, group=self.group)
            offset = 0
            for t in group:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    def global_sum(self, total: torch.Tensor, count: int | float
                   ) -> tuple[torch.Tensor, int | float]:
        """``(Σ total, Σ count)`` over the ranks, from each rank's 0-d sum and its count
        (a float count, a total of sample weights, stays a float)."""
        if not self.active:
            return total, count
        packed = torch.stack([total.detach().double().reshape(()),
                              torch.tensor(float(count), dtype=torch.float64,
                                           device=total.device)])
        dist.all_reduce(packed, group=self.group)
        summed = packed[1].item()
        return packed[0].to(total.dtype), summed if isinstance(count, float) else round(summed)

    def sum(self, value: float) -> float:
        """The sum of a Python number over the ranks (e.g. an example count)."""
        return float(self._reduce_number(value, dist.ReduceOp.SUM))

    def max(self, value: float) -> float:
        """The largest of a Python number over the ranks (e.g. elapsed training time)."""
        return float(self._reduce_number(value, dist.ReduceOp.MAX))

    def _reduce_number(self, value, op):
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=op, group=self.group)
        return tensor.item()

    @property
    def device(self) -> torch.device:
        """Where collectives' buffers live: the current CUDA device under NCCL."""
        if self.active and dist.get_backend(self.group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def owner(self, index: int) -> int:
        """The rank that computes item ``index`` of a shared-out job (round-robin)."""
        return index % self.world_size

    def broadcast(self, tensors, src: int) -> None:
        """Broadcast ``tensors`` (in place) from group rank ``src``, one call per dtype."""
        if not self.active:
            return
        for group in _by_dtype(tensors):
            if self.rank == src:
                flat = torch.cat([t.reshape(-1) for t in group])
            else:
                flat = torch.empty(sum(t.numel() for t in group), dtype=group[0].dtype,
                                   device=group[0].device)
            dist.broadcast(flat, src=self.global_rank(src), group=self.group)
            if self.rank != src:
                offset = 0
                for t in group:
                    t.copy_(flat[offset:offset + t.numel()].view_as(t))
                    offset += t.numel()


def _by_dtype(tensors) -> list[list[torch.Tensor]]:
    groups: dict = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _describe(item) -> tuple:
    """``item``'s class, its tensor attributes' layouts, its other attributes.

    The strides matter: a copy laid out differently (e.g. ``eigh``'s column-major
    eigenvectors) multiplies with different round-off, and the ranks would drift apart.
    """
    tensors = {k: (tuple(v.shape), _dense_stride(v), v.dtype)
               for k, v in vars(item).items() if isinstance(v, torch.Tensor)}
    others = {k: v for k, v in vars(item).items() if not isinstance(v, torch.Tensor)}
    return type(item), tensors, others


def compute_on_owners(comm: Communicator, n: int, compute, device) -> list:
    """``[compute(i) for i in range(n)]``, each item computed on one rank and broadcast.

    Item ``i`` is computed by rank ``comm.owner(i)`` only; every rank returns all ``n``
    items. An item is an object whose state is its attributes (tensors and plain
    values), like the damped inverses of :mod:`skkfac.curvature.inverses`. The ranks
    first exchange the items' descriptions (class, shapes, dtypes: small), then each
    owner broadcasts the tensors of all its items at once. Inactive ``comm``: plain
    ``compute`` of every item.
    """
    if not comm.active:
        return [compute(i) for i in range(n)]
    items = [compute(i) if comm.owner(i) == comm.rank else None for i in range(n)]
    gathered = [None] * comm.world_size
    dist.all_gather_object(gathered, {i: _describe(item) for i, item in enumerate(items)
                                      if item is not None}, group=comm.group)
    descriptions = {i: d for by_rank in gathered for i, d in by_rank.items()}
    for owner in range(comm.world_size):
        owned = [i for i in range(n) if comm.owner(i) == owner]
        if owner != comm.rank:
            for i in owned:
                cls, tensors, others = descriptions[i]
                item = cls.__new__(cls)
                item.__dict__.update(others)
                item.__dict__.update({k: _empty(shape, stride, dtype, device)
                                      for k, (shape, stride, dtype) in tensors.items()})
                items[i] = item
        comm.broadcast([vars(items[i])[k] for i in owned for k in descriptions[i][1]],
                       src=owner)
    return items


def _dense_stride(tensor: torch.Tensor):
    """``tensor``'s strides if it fills its memory densely in some order, else None."""
    expected = 1
    for dim in sorted(range(tensor.dim()), key=tensor.stride):
        if tensor.shape[dim] != 1 and tensor.stride(dim) != expected:
            return None
        expected *= tensor.shape[dim]
    return tensor.stride()


def _empty(shape, stride, dtype, device) -> torch.Tensor:
    if stride is None:
        return torch.empty(shape, dtype=dtype, device=device)
    return torch.empty_strided(shape, stride, dtype=dtype, device=device)


def communication_volume(layer_sizes) -> dict:
    """Numbers communicated per rank by data-parallel K-FAC, for an MLP's layer widths.

    Parameters
    ----------
    layer_sizes : sequence of int
        Widths from the input to the output, e.g. ``(784, 1000, 500, 784)``.

    Returns
    -------
    volume : dict
        ``'gradients'``: weights and biases, all-reduced every update;
        ``'factors'``: entries of every ``A`` (``(n_in + 1)²``) and ``G`` (``n_out²``),
        all-reduced with them; ``'inverses'``: entries of the damped inverses
        (``'tikhonov'``: the same sizes as the factors), broadcast from their owners at
        each refresh. The few scalars (example counts, the quadratic model's 2 × 2
        matrix, the losses) are left out: they cost latency, not bandwidth.

    Examples
    --------
    >>> communication_volume((3, 4, 2))
    {'gradients': 26, 'factors': 61, 'inverses': 61}
    """
    pairs = list(itertools.pairwise(layer_sizes))
    factors = sum((n_in + 1) ** 2 + n_out**2 for n_in, n_out in pairs)
    return {"gradients": sum(n_out * (n_in + 1) for n_in, n_out in pairs),
            "factors": factors, "inverses": factors}


# -- the launcher ------------------------------------------------------------------------
def shard_indices(n_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Rows of rank ``rank``: every ``world_size``-th row, the same count on every rank.

    The last ``n_samples mod world_size`` rows are left out so that all ranks run the
    same number of mini-batches per epoch (they must meet at every update).

    Examples
    --------
    >>> shard_indices(7, 0, 2), shard_indices(7, 1, 2)
    (array([0, 2, 4]), array([1, 3, 5]))
    """
    usable = n_samples - n_samples % world_size
    return np.arange(rank, usable, world_size)


#: Estimator parameters that count examples per update: split over the ranks.
PER_UPDATE_SIZES = ("batch_size", "artificial_batch_size", "curvature_batch_size")


def _per_rank_params(estimator, auto_batch_size: int, world_size: int) -> dict:
    """The batch-size parameters each rank fits with (the estimator's are global);
    ``batch_size='auto'`` is ``auto_batch_size``, rounded down to a multiple of the
    number of ranks."""
    params = {}
    for name in PER_UPDATE_SIZES:
        value = getattr(estimator, name, None)
        if value is None:
            continue
        if value == "auto":
            value = auto_batch_size - auto_batch_size % world_size
        if name == "curvature_batch_size":
            # Rows of the curvature estimate need not split evenly: each rank takes its
            # share rounded up (128 rows over 3 ranks: 43 each, 129 in all).
            params[name] = -(-value // world_size)
            continue
        if value % world_size:
            raise ValueError(f"{name}={value} must be a multiple of n_processes="
                             f"{world_size}: each rank takes an equal share of a batch.")
        params[name] = value // world_size
    return params


def _global_auto_batch_size(estimator, X, y, n_processes: int) -> int:
    """``batch_size='auto'`` of one process fitting the rows that the ranks share."""
    if estimator.batch_size != "auto":
        return 0  # unused
    n_used = X.shape[0] - X.shape[0] % n_processes
    return estimator._automatic_batch_size(X[:n_used], None if y is None else y[:n_used])


def _fit_rank(rank, world_size, init_file, backend, estimator, X, y, fit_params, threads,
              result_path):
    """One rank of :func:`fit_data_parallel` (runs in a child process)."""
    torch.set_num_threads(threads)
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank % torch.cuda.device_count())
            estimator.set_params(device=f"cuda:{torch.cuda.current_device()}")
        rows = shard_indices(X.shape[0], rank, world_size)
        if fit_params.get("sample_weight") is not None:
            fit_params = {**fit_params, "sample_weight": fit_params["sample_weight"][rows]}
        estimator.fit(_rows(X, rows), None if y is None else _rows(y, rows), **fit_params)
        if rank == 0:
            with open(result_path, "wb") as handle:
                pickle.dump(estimator, handle)
    finally:
        dist.destroy_process_group()


def _shared(array: np.ndarray):
    """A shared-memory tensor of a numeric array (read by every rank without a copy)."""
    array = np.ascontiguousarray(array)
    if array.dtype.kind not in "biuf":
        return array  # e.g. string class labels: pickled to each rank instead
    return torch.from_numpy(array).share_memory_()


def _rows(data, rows):
    return data.numpy()[rows] if isinstance(data, torch.Tensor) else data[rows]


def fit_data_parallel(estimator, X, y=None, *, n_processes: int = 2, backend=None,
                      threads_per_process: int = 1, **fit_params):
    """Fit a ``KFAC*`` estimator data-parallel over ``n_processes`` local processes.

    The processes are started with :mod:`torch.multiprocessing` and joined in a
    ``torch.distributed`` group; rank ``r`` trains on rows ``r, r + n, r + 2n, …`` of
    ``X``. The estimator's batch sizes (``batch_size``, ``artificial_batch_size``,
    ``curvature_batch_size``) stay those of the whole update: each rank takes
    ``1/n_processes`` of every batch, so the updates are those of one process on the
    whole batch (up to round-off, and to which rows meet in a batch). The batch sizes
    must be multiples of ``n_processes``; ``curvature_batch_size`` is rounded up to one.
    ``max_time`` is the slowest rank's training time: the ranks stop together.

    Parameters
    ----------
    estimator : KFACRegressor, KFACClassifier or KFACAutoencoder
        With ``solver='kfac'`` and ``early_stopping`` False or ``'auto'`` (no
        validation split is held out in data-parallel training); not modified.
    X : array-like of shape (n_samples, n_features)
    y : array-like or None
        Targets (None for the autoencoder).
    n_processes : int, default=2
        Number of ranks. Up to ``n_processes - 1`` trailing rows are left out so that
        every rank holds the same number of rows.
    backend : {'gloo', 'nccl'} or None
        ``None``: NCCL with one GPU per rank (rank ``r`` on ``cuda:r``) when there are
        at least ``n_processes`` CUDA devices and ``estimator.device`` is not
        ``'cpu'``, else gloo, and the ranks train on CPUs.
    threads_per_process : int, default=1
        ``torch.set_num_threads`` of each rank.
    **fit_params
        Passed to each rank's ``fit`` (e.g. ``eval_set``); a ``sample_weight`` is
        sharded with the rows, after the rows of weight 0 are left out.

    Returns
    -------
    estimator : the fitted estimator of rank 0 (all ranks hold the same weights)
        A new object; ``estimator`` itself is left unfitted.
    """
    import torch.multiprocessing as mp
    from sklearn.base import clone, is_classifier
    from sklearn.utils.validation import _check_sample_weight

    if getattr(estimator, "solver", None) != "kfac":
        raise ValueError("fit_data_parallel trains solver='kfac' only.")
    if getattr(estimator, "early_stopping", False) is True:
        raise ValueError("fit_data_parallel does not support early_stopping=True (each "
                         "rank would score its own validation split).")
    if int(n_processes) < 1:
        raise ValueError(f"n_processes must be >= 1, got {n_processes}.")
    X = np.asarray(X)
    if fit_params.get("sample_weight") is not None:
        # Rows of weight 0 are left out before sharding (as a single-process fit leaves
        # them out): every rank keeps the same number of rows.
        weight = _check_sample_weight(fit_params["sample_weight"], X, dtype=np.float64,
                                      ensure_non_negative=True)
        kept = weight > 0
        X, weight = X[kept], weight[kept]
        y = None if y is None else np.asarray(y)[kept]
        fit_params = {**fit_params, "sample_weight": weight}
    if X.shape[0] < 2 * n_processes:
        raise ValueError(f"{X.shape[0]} rows are too few for {n_processes} processes.")
    if is_classifier(estimator):
        # Each rank learns the classes from its shard: all must see every class.
        classes = np.unique(np.asarray(y))
        for rank in range(n_processes):
            seen = np.unique(np.asarray(y)[shard_indices(X.shape[0], rank, n_processes)])
            if len(seen) != len(classes):
                raise ValueError(f"Rank {rank}'s shard lacks classes "
                                 f"{sorted(set(classes.tolist()) - set(seen.tolist()))}: "
                                 "every rank must see every class (reorder or subsample "
                                 "the rows).")
    if backend is None:
        backend = ("nccl" if estimator.device != "cpu"
                   and torch.cuda.device_count() >= n_processes else "gloo")
    per_rank = clone(estimator).set_params(
        early_stopping=False,  # 'auto' too: every rank would hold out its own split
        **_per_rank_params(estimator, _global_auto_batch_size(estimator, X, y, n_processes),
                           n_processes))
    if backend == "gloo" and estimator.device != "cpu":
        if estimator.device != "auto":
            raise ValueError(f"device={estimator.device!r} needs backend='nccl' and one "
                             f"CUDA device per rank ({n_processes}).")
        per_rank.set_params(device="cpu")  # gloo: the ranks train on CPUs
    X_shared = _shared(X)
    y_shared = None if y is None else _shared(np.asarray(y))
    with tempfile.TemporaryDirectory(prefix="skkfac-dp-") as folder:
        init_file = Path(folder) / "rendezvous"
        result_path = Path(folder) / "estimator.pkl"
        mp.start_processes(_fit_rank, nprocs=n_processes, start_method="spawn",
                           args=(n_processes, os.fspath(init_file), backend, per_rank,
                                 X_shared, y_shared, fit_params, threads_per_process,
                                 os.fspath(result_path)))
        with open(result_path, "rb") as handle:
            fitted = pickle.load(handle)
    # Report the parameters the user asked for, not the per-rank shares.
    return fitted.set_params(**{name: getattr(estimator, name) for name in PER_UPDATE_SIZES
                                if hasattr(estimator, name)})
