"""Host reads per K-FAC update, counted on the CPU (each would wait for a GPU)."""

from contextlib import contextmanager

import pytest
import torch

from skkfac import KFAC
from skkfac.nn import build_mlp

READS = ("item", "tolist", "numpy", "cpu", "__float__", "__int__", "__bool__", "__index__")


@contextmanager
def count_host_reads():
    """Count the Tensor methods that copy a value to the host (a device sync on a GPU)."""
    counts = []
    originals = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name):
        original = originals[name]

        def method(self, *args, **kwargs):
            counts.append(name)
            return original(self, *args, **kwargs)

        return method

    for name in READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def autoencoder(**kwargs):
    model = build_mlp(64, (32, 8, 32), 64, generator=torch.Generator().manual_seed(0))
    return KFAC(model, "squared_error", random_state=0, **kwargs)


def reads_per_update(opt, X, updates):
    """Host reads of each of ``updates`` accumulate + step calls, after two warm-up
    updates (the first one is a scheduled refresh anyway); also the last report."""
    for _ in range(2):
        opt.accumulate(X, X)
        opt.step()
    per_update = []
    for _ in range(updates):
        with count_host_reads() as reads:
            opt.accumulate(X, X)
            report = opt.step()
        per_update.append(len(reads))
    return per_update, report


@pytest.mark.parametrize("options", [{}, {"curvature_batch_size": None},
                                     {"adaptive_step": False, "kl_clip": 0.01}])
def test_a_kfac_update_reads_at_most_one_value_from_the_device(options):
    X = torch.rand(300, 64, generator=torch.Generator().manual_seed(1))
    opt = autoencoder(inv_update_freq=3, damping_adapt_interval=2, **options)
    # 9 updates cover refresh and adaptation updates, and those between.
    per_update, report = reads_per_update(opt, X, 9)
    assert max(per_update) <= 1, per_update
    assert report.fetch()["accepted"]  # fetch itself: one transfer, by the caller


def test_ekfac_adds_no_read_to_an_update():
    """EKFAC's per-update work (rows, re-estimated scaling, carry into a new basis) stays
    on the device. Its refreshes read like ``'eigen'``'s (the eigendecomposition checks
    its eigenvalues on the host), so the updates counted here are those between them."""
    X = torch.rand(300, 64, generator=torch.Generator().manual_seed(1))
    opt = autoencoder(damping_scheme="ekfac", inv_update_freq=100, damping_adapt_interval=2)
    opt.accumulate(X, X)
    opt.step()  # the first update computes the inverses kept below
    inverses = [block.inverse for block in opt.blocks]
    per_update, _ = reads_per_update(opt, X, 6)
    assert [block.inverse for block in opt.blocks] == inverses  # no refresh in between
    assert max(per_update) <= 1, per_update
    assert all(bool(inverse.estimated) for inverse in inverses)


def test_counter_sees_reads():
    with count_host_reads() as reads:
        float(torch.ones(()))
        bool(torch.ones(()) > 0)
    assert reads == ["__float__", "__bool__"]


def test_low_rank_preconditioning_reads_nothing_more():
    """16-row batches: the 64-32 and 32-64 layers take the low-rank route."""
    X = torch.rand(16, 64, generator=torch.Generator().manual_seed(1))
    opt = autoencoder(inv_update_freq=3, damping_adapt_interval=2)
    assert max(opt.curvature.low_rank_rows) > 16
    per_update, _ = reads_per_update(opt, X, 6)
    assert max(per_update) <= 1, per_update
