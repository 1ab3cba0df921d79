"""Every file of the checkout that the code's comments and docstrings or the Markdown pages cite
exists: a moved or renamed file shows here, not as a dead end for a reader
(``training/export.py`` cited ``docs/GUIDE``, which never existed in this tree)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO
from tests.unit.test_layout import SKIPPED, python_files

#: Top-level folders of the checkout: a citation starts with one of them.
FOLDERS = (
    "benchmarks|configs|docs|examples|handserve|handserve_cli|k8s|load_tests|requirements"
    "|scripts|service|tests|training"
)
#: ``docs/training.md``, ``tests/fixtures_run.py``, ``docs/GUIDE`` (not ``../shared/x``, not a
#: URL's path: nothing but a space, quote or bracket may come before it).
CITED = re.compile(rf"(?<![\w./-])((?:{FOLDERS})/[\w./-]*\w)")


def markdown_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.md") if not set(p.relative_to(REPO).parts) & SKIPPED)


def broken_citations(text: str, here: Path = REPO) -> list[tuple[int, str]]:
    """``(line, path)`` of each cited path that is neither a file or folder of the checkout (or
    of the citing page's folder ``here``: a Markdown link is relative to its page) nor a page
    without its ``.md``; ``kubectl`` lines name resources (``service/handserve``)."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if "kubectl" in line:
            continue
        for path in CITED.findall(line):
            if not any(
                (base / name).exists() for base in {REPO, here} for name in (path, f"{path}.md")
            ) and not _made_by_a_step(path):
                found.append((number, path))
    return found


def _made_by_a_step(path: str) -> bool:
    """A path git ignores because a make step writes it (``service/static/vendor``, made by
    ``make vendor-web``): cited on purpose, absent from a fresh clone."""
    import subprocess

    return any(  # a folder pattern ("vendor/") matches the path with its slash
        subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", name], check=False).returncode
        == 0
        for name in (path, path + "/")
    )


def test_the_scan_catches_a_missing_file() -> None:
    text = "see docs/GUIDE facts\n(docs/training.md, tests/conftest.py)\n../shared/data/x\n"
    assert broken_citations(text) == [(1, "docs/GUIDE")]


def test_every_cited_file_exists() -> None:
    files = [*python_files(), *markdown_files()]
    assert REPO / "docs" / "training.md" in files and REPO / "training" / "export.py" in files
    broken = [
        f"{path.relative_to(REPO)}:{line}: {cited}"
        for path in files
        for line, cited in broken_citations(
            path.read_text(), path.parent if path.suffix == ".md" else REPO
        )
    ]
    assert not broken, "these cite files that do not exist:\n" + "\n".join(broken)
