"""Dataset loaders in the spirit of scikit-learn's ``fetch_*`` functions.

Every loader reads files under a *data home* (:func:`get_data_home`: the ``data_home``
argument, else the ``SKKFAC_DATA`` environment variable, else ``~/skkfac_data``) and
returns a :class:`sklearn.utils.Bunch` with ``X_train, y_train, X_test, y_test`` (numpy
arrays), ``DESCR`` (provenance, preprocessing and caveats) and ``source`` (the files
read); image loaders also give ``feature_names``/``target_names``.

=====================================  ==============================================
:func:`load_mnist`                     ``<home>/mnist/`` four IDX files (``.gz`` or raw)
:func:`load_cifar10`                   ``<home>/cifar10/`` pickled batches, their
                                       ``.tar.gz``, or ``{train,test}/<class>/`` images
                                       (unpacked or in a ``.tar.gz``)
:func:`load_ct_slices`                 ``<home>/ct_slices/slice_localization_data.csv``
                                       (or ``.zip``)
:func:`load_uci_regression`            ``<home>/uci/<name>.csv[.gz]`` or a path
=====================================  ==============================================

Files are verified against a ``SHA256SUMS`` list in their folder when there is one.
Nothing is downloaded unless ``download=True`` is passed (MNIST, CIFAR-10, CT slices);
downloads go through :mod:`pooch`, are checked against the canonical SHA-256 digests
and appear under their final name only when complete and verified.
Decoded images are cached as ``.npz`` (next to the data, or under
:func:`get_cache_home` when the data folder is read-only); a cache that is incomplete or
damaged is rebuilt, and partial cache files of a killed process are removed on the next
load.
"""

from skkfac.datasets._base import (
    ChecksumMismatchError,
    DatasetCorruptError,
    DatasetNotFoundError,
    get_cache_home,
    get_data_home,
)
from skkfac.datasets._cifar10 import load_cifar10
from skkfac.datasets._ct_slices import load_ct_slices
from skkfac.datasets._download import DownloadError
from skkfac.datasets._mnist import load_mnist
from skkfac.datasets._uci import load_uci_regression

__all__ = [
    "ChecksumMismatchError",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "DownloadError",
    "get_cache_home",
    "get_data_home",
    "load_cifar10",
    "load_ct_slices",
    "load_mnist",
    "load_uci_regression",
]
