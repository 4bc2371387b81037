"""The exactness tests of tests/test_kfac_exact.py, run again on the GPU (skipped without one).

The tests are imported, not copied: the ``exact_device`` fixture they all use (through
their autouse fixture) is overridden here, so every tensor they create lands on the GPU.
"""

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from test_kfac_exact import *  # noqa: F403


@pytest.fixture
def exact_device():
    return torch.device("cuda", torch.cuda.current_device())
