"""Session fixture: one tiny trained run (owned by training; see docs/architecture.md).

``tiny_run`` trains the from-scratch CNN on 300 embedded digits for two epochs, once per test
session, and returns the finished run folder. Export and service tests reuse it, so it must be
cheap (seconds) and must hold every file of the run-folder contract.
"""

from __future__ import annotations

from pathlib import Path

import pytest

#: Settings of the shared tiny run; tests may read them to know what was trained.
TINY_RUN_SETTINGS = {
    "dataset": "digits",
    "backbone": "cnn",
    "weights": "none",
    "limit": 300,
    "epochs": 2,
    # 5e-3 rather than the default 1e-3: two epochs on 240 images then get well above chance,
    # so parity and service tests compare a model with real decisions, not a flat softmax.
    "learning_rate": 5e-3,
    "batch_size": 32,
    "early_stopping": 0,
    "seed": 7,
    "run_name": "tiny",
}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of a finished run folder (digits, cnn, 2 epochs), trained once per session."""
    from training.config import TrainConfig
    from training.train import train

    runs = tmp_path_factory.mktemp("tiny_run") / "runs"
    cfg = TrainConfig(**TINY_RUN_SETTINGS, runs_dir=str(runs))  # type: ignore[arg-type]
    result = train(cfg, verbose=0)
    return result.run_dir
