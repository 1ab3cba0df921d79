"""One line for a command that the storage stopped: a full disk, a read-only folder, a missing
permission.

Such a failure is no bug of the command, and a 25-46-line traceback hides the one fact the user
needs: which path, and why. Python reports them as :class:`OSError` with an ``errno``;
TensorFlow's C++ file system (the SavedModel's variables, checkpoints) as its own
``ResourceExhaustedError`` or ``PermissionDeniedError`` whose message ends in ``PATH; CAUSE``.
:func:`storage_failure` turns either into ``PATH: CAUSE``; anything else is left to propagate
(a real bug keeps its traceback). The stages clean up what they started on any exception
(``handserve.artifacts.staging_version``, ``training.train.partial_run_dir``), and name their
folder on an error that names no file.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterator

#: errno values that mean the storage refused, whatever the command was doing.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM}
)

#: TensorFlow's exception classes for the same (it maps ENOSPC and EDQUOT to RESOURCE_EXHAUSTED,
#: EACCES, EPERM and EROFS to PERMISSION_DENIED).
TF_STORAGE_ERRORS = frozenset({"ResourceExhaustedError", "PermissionDeniedError"})

#: ``... /some/path; No space left on device [Op:SaveV2]``: the path and the cause.
_TF_MESSAGE = re.compile(r"(?P<path>[^\s;{}]+); (?P<cause>[^;\[]+?)\s*(?:\[Op:\w+\])?\s*$")


def storage_failure(exc: BaseException) -> str | None:
    """``PATH: CAUSE`` when ``exc`` (or an exception it was raised from) is a storage failure,
    else None."""
    for err in _chain(exc):
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            # A copy names its source and destination; the destination is what was written.
            path = err.filename2 if err.filename2 is not None else err.filename
            cause = os.strerror(err.errno)
            return f"{os.fsdecode(path)}: {cause}" if path is not None else cause
        if type(err).__name__ in TF_STORAGE_ERRORS and type(err).__module__.startswith(
            "tensorflow"
        ):
            # Only a file system's message ("PATH; CAUSE"): RESOURCE_EXHAUSTED is also what an
            # out-of-memory tensor allocation raises, which keeps its traceback.
            message = str(getattr(err, "message", err)).strip()
            found = _TF_MESSAGE.search(message.splitlines()[-1] if message else "")
            if found:
                return f"{found['path']}: {found['cause']}"
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
