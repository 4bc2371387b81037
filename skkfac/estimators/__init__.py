"""scikit-learn estimators: thin subclasses of one base class."""

from skkfac.estimators.autoencoder import KFACAutoencoder
from skkfac.estimators.classifier import KFACClassifier
from skkfac.estimators.regressor import KFACRegressor

__all__ = ["KFACAutoencoder", "KFACClassifier", "KFACRegressor"]
