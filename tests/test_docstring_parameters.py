"""Docstrings document exactly the parameters of the signatures (like scikit-learn's
``test_docstring_parameters``), parsed with numpydoc."""

import inspect

import pytest

numpydoc_docscrape = pytest.importorskip("numpydoc.docscrape")

import skkfac  # noqa: E402
import skkfac.callbacks  # noqa: E402
import skkfac.search  # noqa: E402
import skkfac.solvers  # noqa: E402
import skkfac.training  # noqa: E402

#: Public classes whose constructor and public methods are checked.
CLASSES = [skkfac.KFACRegressor, skkfac.KFACClassifier, skkfac.KFACAutoencoder,
           skkfac.KFAC, skkfac.solvers.NesterovSGD, skkfac.solvers.Adam,
           skkfac.callbacks.ProgressBar, skkfac.callbacks.Checkpoint,
           skkfac.training.Trainer]
#: Public functions checked.
FUNCTIONS = [skkfac.search.search_space, skkfac.search.kfac_search_space,
             skkfac.search.sgd_search_space, skkfac.search.adam_search_space]


def _documented(doc) -> list[str]:
    names = []
    for parameter in doc["Parameters"]:
        names += [name.strip() for name in parameter.name.split(",")]
    return names


def _signature_names(function, *, skip_first: bool) -> list[str]:
    parameters = list(inspect.signature(function).parameters.values())
    if skip_first:
        parameters = parameters[1:]
    return [("**" if p.kind is p.VAR_KEYWORD else "*" if p.kind is p.VAR_POSITIONAL else "")
            + p.name for p in parameters]


def _public_methods(cls):
    for name, member in vars(cls).items():
        if name.startswith("_") or not inspect.isfunction(member):
            continue
        if member.__doc__ and "Parameters\n" in member.__doc__:
            yield name, member


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_class_docstring_parameters_match_the_signature(cls):
    doc = numpydoc_docscrape.ClassDoc(cls)
    assert _documented(doc) == _signature_names(cls.__init__, skip_first=True)
    for name, method in _public_methods(cls):
        documented = _documented(numpydoc_docscrape.FunctionDoc(method))
        assert documented == _signature_names(method, skip_first=True), f"{cls.__name__}.{name}"


@pytest.mark.parametrize("function", FUNCTIONS, ids=lambda f: f.__name__)
def test_function_docstring_parameters_match_the_signature(function):
    doc = numpydoc_docscrape.FunctionDoc(function)
    assert _documented(doc) == _signature_names(function, skip_first=False)


@pytest.mark.parametrize("cls", CLASSES[:3], ids=lambda c: c.__name__)
def test_estimator_methods_document_their_parameters(cls):
    """fit, partial_fit, predict, score... all have a complete Parameters section."""
    for name in ("fit", "partial_fit", "predict", "score", "transform", "inverse_transform",
                 "predict_proba", "predict_log_proba"):
        method = getattr(cls, name, None)
        if method is None:
            continue
        documented = _documented(numpydoc_docscrape.FunctionDoc(method))
        assert documented == _signature_names(method, skip_first=True), f"{cls.__name__}.{name}"
