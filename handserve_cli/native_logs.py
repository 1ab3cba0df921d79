"""Keep TensorFlow's C++ start-up lines off a CLI user's terminal.

TensorFlow 2.21 writes its oneDNN, CUDA-stub and cuInit lines through Abseil before
``absl::InitializeLog()`` runs, and those ignore ``TF_CPP_MIN_LOG_LEVEL`` (abseil-cpp PR #1957
is the upstream fix). They are written to file descriptor 2 by C++, where Python's logging
cannot reach them, so :func:`drop_native_log_lines` points descriptor 2 at a pipe for the length
of a command and forwards every line except Abseil's to the real stderr. ``handserve -v`` skips
it and shows them all.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

#: Abseil's prefix ("I0000 00:00:1795.5  2304 port.cc:153] ...") for info, warning and error
#: lines, its warning about logging before initialisation, and the second line of TensorFlow's
#: CPU-feature notice.
NATIVE_LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.-]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|To enable the following instructions: )"
)


@contextlib.contextmanager
def drop_native_log_lines() -> Iterator[None]:
    """Filter file descriptor 2 while the block runs; everything else reaches stderr in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as lines, os.fdopen(os.dup(saved), "wb", 0) as out:
            for line in lines:
                if not NATIVE_LOG_LINE.match(line):
                    out.write(line)

    thread = threading.Thread(target=forward, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread sees EOF and ends
        thread.join(timeout=5)
        os.close(saved)
