"""Where the estimators compute, and how fitted state moves between devices.

skkfac runs on the CPU and on CUDA devices (NVIDIA GPUs, and AMD GPUs through ROCm,
which PyTorch also calls ``cuda``). The ``device`` parameter of the estimators accepts

* ``'auto'``: the current CUDA device when PyTorch sees one, else the CPU;
* ``'cpu'``, ``'cuda'`` (the current CUDA device) or ``'cuda:N'``;
* ``'cuda:worker'``: in the worker processes of a parallel search, one GPU per worker in
  turn (see :func:`worker_index`); in the main process, the current CUDA device.

Every choice resolves to an *indexed* device (``cuda:0``, never a bare ``cuda``), so
data and network always land on the same GPU even if the current device changes.

Fitted state moves between devices through PyTorch's own serialisation:
:func:`dumps` writes it with the devices it is on, :func:`loads` reads it back with every
tensor mapped to the device asked for (``map_location``). The estimators use the pair to
pickle a model fitted on a GPU so that it loads on a CPU-only machine, and to move a
fitted model when its ``device`` parameter changes.
"""

from __future__ import annotations

import io
import multiprocessing

import torch

#: Device types the estimators support.
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")
#: The ``device`` value that spreads the worker processes of a search over the GPUs.
WORKER_DEVICE = "cuda:worker"

_UNSUPPORTED_REASONS = {
    "mps": "Apple's MPS backend lacks float64 and the symmetric eigendecomposition "
           "(torch.linalg.eigh) that K-FAC's inverses use",
}


def resolve_device(device: str | torch.device) -> torch.device:
    """The indexed device that ``device`` names on this machine.

    Parameters
    ----------
    device : str or torch.device
        ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'``, ``'cuda:worker'`` or a
        :class:`torch.device`.

    Returns
    -------
    torch.device
        ``cpu`` or ``cuda:N`` with an explicit index.

    Raises
    ------
    ValueError
        For a device string PyTorch does not parse, a device type skkfac does not
        support (``mps``, ``xpu``, ``meta``...), CUDA on a machine without it, or a CUDA
        index beyond the GPUs this process sees.

    Examples
    --------
    >>> from skkfac.devices import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    ValueError: device='tpu' is not a valid torch device string.
    """
    if isinstance(device, str) and device in ("auto", WORKER_DEVICE):
        if device == "auto" and not torch.cuda.is_available():
            return torch.device("cpu")
        index = worker_index() if device == WORKER_DEVICE else None
        return _cuda_device(device, None if index is None else index % _cuda_count(device))
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} is not a valid torch device string.") from None
    if resolved.type == "cpu":
        return torch.device("cpu")
    if resolved.type != "cuda":
        reason = _UNSUPPORTED_REASONS.get(resolved.type, "it is not supported")
        supported = " and ".join(SUPPORTED_DEVICE_TYPES)
        raise ValueError(f"device={str(device)!r}: skkfac runs on {supported} devices only; "
                         f"{reason}. Use device='cpu'.")
    return _cuda_device(device, resolved.index)


def _cuda_count(requested) -> int:
    if not torch.cuda.is_available():
        raise ValueError(f"device={str(requested)!r} was requested but CUDA is not "
                         "available (no GPU visible to PyTorch, or a CPU-only build of "
                         "PyTorch). Use device='cpu' or device='auto'.")
    return torch.cuda.device_count()


def _cuda_device(requested, index: int | None) -> torch.device:
    count = _cuda_count(requested)
    if index is None:
        index = torch.cuda.current_device()
    if index >= count:
        raise ValueError(f"device={str(requested)!r} was requested but this process sees "
                         f"{count} CUDA device(s): cuda:0 to cuda:{count - 1}. "
                         "(CUDA_VISIBLE_DEVICES renumbers the visible GPUs from 0.)")
    return torch.device("cuda", index)


def target_device(requested: str | torch.device,
                  current: torch.device | None = None) -> torch.device:
    """Where state now on ``current`` belongs for the ``device`` parameter ``requested``.

    An explicit device (``'cpu'``, ``'cuda'``, ``'cuda:1'``) is taken literally. The
    flexible values ``'auto'`` and ``'cuda:worker'`` ask for a kind of device, not a
    particular one: state already on an available device of that kind stays there (a
    model fitted on ``cuda:1`` is not moved to ``cuda:0`` because the current device
    changed); otherwise it goes where the value resolves on this machine.

    Raises
    ------
    ValueError
        As :func:`resolve_device`.
    """
    wanted = resolve_device(requested)
    flexible = isinstance(requested, str) and requested in ("auto", WORKER_DEVICE)
    if (flexible and current is not None and current.type == wanted.type
            and is_available(current)):
        return current
    return wanted


def is_available(device: torch.device) -> bool:
    """Whether this process can put tensors on ``device`` (an indexed device)."""
    try:
        return resolve_device(device) == device
    except ValueError:
        return False


def worker_index() -> int | None:
    """The number of this worker process among those its parent started, from 0.

    Python's process pools (joblib's default ``loky`` backend, ``multiprocessing``)
    number the processes a parent starts 1, 2, 3...; ``device='cuda:worker'`` puts
    worker ``k`` on GPU ``k mod device_count``, so a search with ``n_jobs`` equal to the
    number of GPUs (or a multiple of it) uses every GPU equally. A worker that replaces
    a dead one takes the next number. Threads share their process's device.

    Returns
    -------
    int or None
        ``None`` in the main process.
    """
    # multiprocessing's numbering of child processes (it also names them from it:
    # 'LokyProcess-3', 'ForkPoolWorker-2').
    identity = getattr(multiprocessing.current_process(), "_identity", ())
    return identity[-1] - 1 if identity else None


def dumps(obj) -> bytes:
    """Serialise ``obj`` (any picklable object holding tensors) with :func:`torch.save`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def loads(data: bytes, device: torch.device | str):
    """Read what :func:`dumps` wrote, every tensor mapped to ``device``.

    Tensors saved on a device this machine lacks (a GPU, on a CPU-only machine) load
    wherever ``device`` says; identities between objects (a model's parameters shared
    with its optimizer's state) are kept.
    """
    # weights_only=False: these are skkfac's own objects, loaded from a pickle that
    # could already run arbitrary code; the restricted loader would refuse them.
    return torch.load(io.BytesIO(data), map_location=torch.device(device),
                      weights_only=False)


def move(obj, device: torch.device | str):
    """A copy of ``obj`` with every tensor in it on ``device``.

    Parameters' ``.grad`` are not copied (PyTorch does not serialise them).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skkfac.devices import move
    >>> model = nn.Linear(2, 1)
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> moved_model, moved_optimizer = move((model, optimizer), "cpu")
    >>> moved_optimizer.param_groups[0]["params"][0] is moved_model.weight
    True
    """
    return loads(dumps(obj), device)
