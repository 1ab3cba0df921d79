"""The docs keep up with the code: reference tables read from the code, links that resolve.

docs/service.md's "Configuration" table must hold a row per field of ``ServiceConfig`` (with
its ``HANDSERVE_*`` variable and its default) and its "Metrics" table a row per metric that
``service.metrics.create`` makes; a row naming something the code no longer has fails too.
Before this test both tables had drifted: the gRPC settings and metrics were missing. And every
relative link of the Markdown files must reach a file and, with a ``#fragment``, one of its
headings, so moving a section (as the dated benchmarks moved to docs/benchmarks/) cannot leave
a link behind.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from service import metrics
from service.config import ENV_PREFIX, ServiceConfig
from tests.conftest import REPO

SERVICE_DOC = REPO / "docs" / "service.md"
#: The Markdown a reader follows links in (models/ and the ignored folders hold none of ours).
MARKDOWN = sorted(
    [
        REPO / "README.md",
        REPO / "load_tests" / "README.md",
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "k8s").rglob("README.md"),
    ]
)
#: [text](target) of Markdown, not images' or code's; the target up to a space or ')'.
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
#: A name in backticks: `models_dir`, `HANDSERVE_MODELS_DIR`, `handserve_batch_size`.
TICKED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def section(heading: str) -> str:
    """The text under ``## heading`` of docs/service.md, up to the next ``## `` heading."""
    text = SERVICE_DOC.read_text(encoding="utf-8")
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert found, f"{SERVICE_DOC.name} has no '## {heading}' section"
    return found.group(1)


def table_rows(text: str) -> list[list[str]]:
    """The cells of every table body row in ``text`` (header and ``|---|`` rows left out)."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if all(set(cell) <= set("-: ") for cell in cells):  # the |---| line
            continue
        rows.append(cells)
    return rows[1:] if rows else rows  # the first row is the header


def rows_by_first_name(heading: str, keep: re.Pattern[str]) -> dict[str, list[str]]:
    """Each backticked name matching ``keep`` in a row's first cell -> that row."""
    out: dict[str, list[str]] = {}
    for cells in table_rows(section(heading)):
        for name in TICKED.findall(cells[0]):
            if keep.fullmatch(name):
                out[name] = cells
    return out


def config_rows() -> dict[str, list[str]]:
    return rows_by_first_name("Configuration", re.compile(r"[a-z][a-z0-9_]*"))


def shown(default: Any) -> str:
    """A default as the table writes it: what one would type in a config file or variable."""
    if default is None:
        return "none"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    if isinstance(default, dict):
        return "{}" if not default else str(default)
    return str(default)


def test_every_config_field_has_a_row() -> None:
    rows = config_rows()
    missing = sorted(set(ServiceConfig.model_fields) - set(rows))
    assert not missing, (
        f"ServiceConfig fields missing from the table under '## Configuration' in "
        f"{SERVICE_DOC.relative_to(REPO)}: {missing}"
    )


def test_no_config_row_names_a_field_that_is_gone() -> None:
    stale = sorted(set(config_rows()) - set(ServiceConfig.model_fields))
    assert not stale, f"the Configuration table names no-longer-existing fields: {stale}"


@pytest.mark.parametrize("name", sorted(ServiceConfig.model_fields))
def test_config_row_gives_the_variable_and_the_default(name: str) -> None:
    cells = config_rows().get(name)
    if cells is None:
        pytest.fail(f"no Configuration row for {name}")
    variable = ENV_PREFIX + name.upper()
    assert f"`{variable}`" in cells[1], f"{name}: the variable column should say `{variable}`"
    default = ServiceConfig.model_fields[name].get_default(call_default_factory=True)
    written = cells[2].replace("`", "").replace(",", "").split(" ")[0]
    assert written == shown(default), (
        f"{name}: the table's default is {cells[2]!r}, the code's is {default!r} "
        f"(write it as {shown(default)!r})"
    )


def metric_names() -> set[str]:
    """Every metric ``service.metrics.create`` makes, as ``/metrics`` names it."""
    registry = prometheus_client.CollectorRegistry()
    metrics.create(max_batch_size=64, registry=registry)
    # prometheus_client keeps a counter's family name without its "_total" suffix.
    return {m.name + "_total" if m.type == "counter" else m.name for m in registry.collect()}


def test_every_metric_has_a_row() -> None:
    names = metric_names()
    assert len(names) >= 10, names  # the registry really was filled
    rows = rows_by_first_name("Metrics", re.compile(r"handserve_[a-z0-9_]+"))
    missing = sorted(names - set(rows))
    assert not missing, (
        f"metrics missing from the table under '## Metrics' in "
        f"{SERVICE_DOC.relative_to(REPO)}: {missing}"
    )
    stale = sorted(set(rows) - names)
    assert not stale, f"the Metrics table names metrics the code does not make: {stale}"


def anchors(path: Path) -> set[str]:
    """The ``#fragment`` of each heading of ``path``, as GitHub makes it: lower case, spaces to
    ``-``, every character but letters, digits, ``-`` and ``_`` dropped, repeats numbered."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", path.read_text("utf-8")), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        out.add(slug if count == 0 else f"{slug}-{count}")
    return out


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_reach_a_file_and_heading(doc: Path) -> None:
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text("utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto: ... : not ours to check offline
            continue
        file_part, _, fragment = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        if not linked.exists():
            broken.append(f"{target}: no file {linked}")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {linked.name}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


#: A reference page says what the code does now; past the length a reader finishes, the dated
#: history goes to docs/benchmarks/ (docs/service.md had grown to 1,487 lines, half of it reruns).
MAX_REFERENCE_LINES = 900


@pytest.mark.parametrize("page", sorted((REPO / "docs").glob("*.md")), ids=lambda p: p.name)
def test_reference_pages_stay_readable(page: Path) -> None:
    lines = len(page.read_text("utf-8").splitlines())
    assert lines <= MAX_REFERENCE_LINES, (
        f"docs/{page.name} has {lines} lines (at most {MAX_REFERENCE_LINES}): move dated runs "
        "to docs/benchmarks/ (newest first) and keep the latest figures here"
    )
