"""The sums of a K-FAC update over the processes that share it (data-parallel training)."""

from __future__ import annotations

import torch


class Reductions:
    """Where every cross-example sum of an update is completed.

    The gradients, the factor statistics, EKFAC's scaling, the quadratic model's sums and
    the curvature losses are summed over the processes that share the update, and so is
    the number of examples behind each sum; a single process has nothing to add. The
    optimizer, its curvature estimate and its quadratic model share one instance: the
    data-parallel seam of K-FAC.

    Parameters
    ----------
    communicator : skkfac.distributed.Communicator
        The processes that share each update.
    """

    def __init__(self, communicator):
        self.communicator = communicator

    def all_reduce(self, tensors: list[torch.Tensor]) -> None:
        """Sum ``tensors`` in place over the processes."""
        self.communicator.all_reduce(tensors)

    def count(self, count: int | float) -> int | float:
        """The number of examples behind a sum, over all the processes; a float count (a
        total of sample weights) stays a float."""
        if not self.communicator.active:
            return count
        total = self.communicator.sum(count)
        return total if isinstance(count, float) else round(total)
