"""The shell scripts run on the bash macOS ships (3.2) as on Linux's.

Under ``set -u``, bash before 4.4 calls an empty array unbound: ``"${extra[@]}"`` stops
``make run`` when ``EPOCHS`` is unset. Only bash 5 is installed here, so the rule is checked in
the text, and the portable form ``${a[@]+"${a[@]}"}`` is run to show it passes the same words.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

#: ``"${name[@]}"`` not inside the guard ``${name[@]+...}``.
BARE_ARRAY = re.compile(r'(?<!\+)"\$\{(\w+)\[@\]\}"')


def nounset_scripts() -> list[Path]:
    """The project's own shell scripts (those git tracks: not a base image's under .cache/,
    nor node_modules') that run under ``set -u``."""
    tracked = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "*.sh"], capture_output=True, text=True, check=True
    ).stdout.split()
    return sorted(
        REPO / name
        for name in tracked
        if re.search(r"^set -\w*u", (REPO / name).read_text(), re.MULTILINE)
    )


def test_the_rule_finds_bare_array_expansions() -> None:
    assert BARE_ARRAY.findall('cmd "${extra[@]}"') == ["extra"]
    assert BARE_ARRAY.findall('cmd ${extra[@]+"${extra[@]}"} "${#n[@]}"') == []


def test_no_script_expands_a_possibly_empty_array_under_set_u() -> None:
    scripts = nounset_scripts()
    assert REPO / "scripts" / "quickstart.sh" in scripts
    bare = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in scripts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if not line.lstrip().startswith("#") and BARE_ARRAY.search(line)
    ]
    assert not bare, 'write ${a[@]+"${a[@]}"} (bash < 4.4 under set -u):\n' + "\n".join(bare)


@pytest.mark.parametrize(
    ("array", "words"), [("()", "<>"), ('("two words" --epochs 3)', "<two words><--epochs><3>")]
)
def test_the_guarded_form_passes_the_same_words(array: str, words: str) -> None:
    code = f'set -euo pipefail; a={array}; printf "<%s>" ${{a[@]+"${{a[@]}}"}}'
    proc = subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == words  # with no word at all, printf prints its format once


@pytest.mark.parametrize("epochs", [None, "3"])
def test_quickstart_passes_epochs_only_when_set(epochs: str | None, tmp_path: Path) -> None:
    """The script end to end with stand-ins for ``handserve`` and ``curl`` that record their
    arguments: no ``--epochs`` without ``EPOCHS``, and no unbound-variable stop."""
    calls = tmp_path / "calls"
    for tool in ("handserve", "curl"):
        stub = tmp_path / "bin" / tool
        stub.parent.mkdir(exist_ok=True)
        stub.write_text(f'#!/usr/bin/env bash\necho "{tool} $*" >> "{calls}"\n')
        stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k != "EPOCHS"}
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    env["MODELS_DIR"] = str(tmp_path / "models")
    if epochs is not None:
        env["EPOCHS"] = epochs
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "quickstart.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    train = next(line for line in calls.read_text().splitlines() if "handserve train" in line)
    assert train.endswith(
        f"--models-dir {tmp_path / 'models'}" + ("" if epochs is None else " --epochs 3")
    )
