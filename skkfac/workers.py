"""Preparing ``dask.distributed`` workers for torch: thread pinning and device choice.

A hyper-parameter search spread over a Dask cluster (joblib's Dask backend, or
``benchmarks.dask_search``) runs many trials side by side. Two things go wrong when the
workers are left as they start:

* every torch process sizes its thread pool to all the machine's cores, so ``k``
  single-threaded Dask workers run ``k × cores`` threads that fight each other (on a
  shared CPU, small operations get orders of magnitude slower);
* every worker uses the first GPU, while the others idle.

:class:`TorchWorkerSetup` is a Dask worker plugin that fixes both when a worker starts:
it sets torch's thread count, and it gives the worker one CUDA device, round-robin over
the devices the worker can see (the ``k``-th worker gets device ``k mod n``), by
restricting ``CUDA_VISIBLE_DEVICES`` before CUDA is initialised in the worker process.
Estimators with ``device='auto'`` (or ``'cuda'``) then train on that device.
:func:`setup_torch_workers` registers it on a client.

The worker's rank ``k`` is its name when the name is an integer (``LocalCluster`` names
its workers 0, 1, …) or ends with one (``dask worker --name gpu-3``); other names are
hashed. For a search over ``n`` GPUs, start ``n`` single-threaded workers, for example
``LocalCluster(n_workers=n, threads_per_worker=1)``, or one
``CUDA_VISIBLE_DEVICES=i dask worker ADDRESS --nthreads 1`` per GPU (each worker then
sees one device).
"""

from __future__ import annotations

import os
import re
import zlib

try:
    from distributed import WorkerPlugin
except ImportError:  # the optional 'dist' extra is not installed
    WorkerPlugin = object

#: What :func:`configure_torch` chose in this process (None until it is called).
_assigned = {"device": None, "threads": None}


def worker_rank(name) -> int:
    """A non-negative integer for a worker name: the name or its trailing digits, else a hash.

    Examples
    --------
    >>> worker_rank(3), worker_rank("gpu-12"), worker_rank("tcp://10.0.0.1:4000") >= 0
    (3, 12, True)
    """
    if isinstance(name, int) and name >= 0:
        return name
    match = re.search(r"(\d+)$", str(name))
    if match and not str(name).startswith(("tcp://", "tls://", "inproc://")):
        return int(match.group(1))
    return zlib.crc32(str(name).encode())


def _visible_devices() -> list[str]:
    """The CUDA devices this process may use, as ``CUDA_VISIBLE_DEVICES`` entries.

    ``torch.cuda.device_count`` counts through NVML where it can, which leaves CUDA
    uninitialised (``torch.cuda.is_available`` would initialise the driver, after which
    ``CUDA_VISIBLE_DEVICES`` no longer has any effect).
    """
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [entry.strip() for entry in listed.split(",") if entry.strip()][:count]
    return [str(index) for index in range(count)]


def configure_torch(rank: int, *, threads: int | None = 1, devices="auto") -> str:
    """Pin torch's threads and choose this process's device; returns the device.

    Parameters
    ----------
    rank : int
        The worker's rank; it gets device ``rank mod n`` of the ``n`` visible devices.
    threads : int or None, default=1
        ``torch.set_num_threads(threads)``; ``None`` leaves torch's choice.
    devices : 'auto', 'cpu' or list of str, default='auto'
        ``'auto'``: the CUDA devices this process sees, the CPU when there is none;
        ``'cpu'``: always the CPU; a list: those ``CUDA_VISIBLE_DEVICES`` entries.

    Returns
    -------
    device : str
        ``'cpu'`` or ``'cuda'`` (the one device left visible to the process).

    Examples
    --------
    >>> configure_torch(0, threads=None, devices="cpu")
    'cpu'
    >>> worker_device()
    'cpu'
    """
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    candidates = (_visible_devices() if devices == "auto"
                  else [] if devices == "cpu" else [str(d) for d in devices])
    device = "cpu"
    if candidates:
        chosen = candidates[rank % len(candidates)]
        if torch.cuda.is_initialized():
            # Too late to hide the other devices: make the chosen one current instead
            # (this holds for the calling thread only; estimators' 'auto' still means
            # the process's current device).
            torch.cuda.set_device(candidates.index(chosen))
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = chosen
        device = "cuda"
    _assigned.update(device=device, threads=threads)
    return device


def worker_device() -> str | None:
    """The device :func:`configure_torch` chose in this process (None if never called)."""
    return _assigned["device"]


class TorchWorkerSetup(WorkerPlugin):
    """Dask worker plugin: :func:`configure_torch` when each worker starts.

    Parameters
    ----------
    threads : int or None, default=1
        Torch threads per worker process (1 for single-threaded workers).
    devices : 'auto', 'cpu' or list of str, default='auto'
        See :func:`configure_torch`.
    """

    def __init__(self, *, threads: int | None = 1, devices="auto"):
        if WorkerPlugin is object:
            raise ImportError("TorchWorkerSetup needs dask.distributed: "
                              "pip install 'skkfac[dist]'.")
        self.threads = threads
        self.devices = devices

    def setup(self, worker):
        configure_torch(worker_rank(worker.name), threads=self.threads,
                        devices=self.devices)


def setup_torch_workers(client, *, threads: int | None = 1, devices="auto") -> dict:
    """Register the torch set-up on every present and future worker of ``client``.

    Returns ``{worker address: (name, device, torch threads)}`` as the workers report it.
    """
    client.register_plugin(TorchWorkerSetup(threads=threads, devices=devices),
                           name="skkfac-torch")
    return client.run(_describe_worker)


def _describe_worker(dask_worker=None):
    import torch

    name = getattr(dask_worker, "name", None)
    return name, worker_device(), torch.get_num_threads()
