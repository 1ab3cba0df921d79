"""The real MNIST and Sign Language MNIST files from ../shared (skipped when absent)."""

from __future__ import annotations

import numpy as np
import pytest

from training.data import load_mnist, load_sign_mnist


@pytest.mark.shared_data
def test_real_sign_mnist(shared_data) -> None:
    ds = load_sign_mnist(shared_data / "sign_mnist", val_fraction=0.1, seed=0)
    assert ds.num_classes == 24
    assert len(ds.train) + len(ds.val) == 27455
    assert ds.test is not None and len(ds.test) == 7172
    assert set(np.unique(ds.train.y)) == set(range(24))
    assert ds.input_shape == (28, 28, 1)


@pytest.mark.shared_data
def test_real_mnist(shared_data) -> None:
    ds = load_mnist(shared_data / "mnist", val_fraction=0.1, seed=0)
    assert len(ds.train) + len(ds.val) == 60000
    assert ds.test is not None and len(ds.test) == 10000
    assert np.bincount(ds.test.y).tolist()[:2] == [980, 1135]  # the canonical MNIST counts
