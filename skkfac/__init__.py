"""skkfac: second-order (K-FAC) training of fully connected networks for scikit-learn.

The public estimators are :class:`KFACRegressor`, :class:`KFACClassifier` and
:class:`KFACAutoencoder`; :class:`KFAC` is the underlying optimizer, usable on any
PyTorch model built from ``nn.Linear`` layers.
"""

from skkfac.estimators import KFACAutoencoder, KFACClassifier, KFACRegressor
from skkfac.solvers.kfac import KFAC

__version__ = "0.1.0"

__all__ = ["KFAC", "KFACAutoencoder", "KFACClassifier", "KFACRegressor", "__version__"]
