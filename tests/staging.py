"""A staging folder for tests that publish a version under a number they choose themselves.

Exports reserve their number with :func:`handserve.artifacts.staging_version`; tests that must
publish onto a taken number, or copy a finished export in as version N, use this instead.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from handserve import artifacts


@contextlib.contextmanager
def staging(models_dir: Path, name: str) -> Iterator[Path]:
    """A hidden ``models/NAME/.staging-*`` folder, removed however the block ends.

    The caller writes a version into it and calls :func:`handserve.artifacts.publish`.
    """
    root = Path(models_dir) / artifacts.validate_name(name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
