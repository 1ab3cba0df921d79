"""The demo page (GET /demo) in a real headless Chromium against a real server.

Run: ``pytest -m browser tests/service/test_demo_page.py``. Needs Debian's Chromium
(``apt-get install chromium``, done by ``scripts/install-test-tools.sh``) and the Python
``playwright`` package; Playwright's own browser download is not used (it cannot reach the
internet here), it drives ``/usr/bin/chromium`` through ``executable_path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image, ImageDraw

pytestmark = [pytest.mark.browser, pytest.mark.server]

from service.fake_camera import CHROMIUM, CHROMIUM_ARGS  # noqa: E402 - the one launch

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is absent (apt-get install chromium, or run make test)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright Python package is not installed"
)

TOP_K = 3
TIMEOUT_MS = 30_000  # first predictions on a 2-core machine shared with others can be slow


def _base_url(server: Any) -> str:
    """The server fixture's base URL, whether it yields a string or an object carrying one."""
    for attr in ("base_url", "url"):
        if hasattr(server, attr):
            return str(getattr(server, attr)).rstrip("/")
    return str(server).rstrip("/")


@pytest.fixture(scope="module")
def base_url(server: Any) -> str:
    return _base_url(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Any, base_url: str) -> Iterator[Any]:
    """A fresh page on /demo with the model list loaded; fails the test on any JS error."""
    context = browser.new_context(viewport={"width": 1100, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    js_errors: list[str] = []
    page.on("pageerror", lambda exc: js_errors.append(str(exc)))
    page.goto(f"{base_url}/demo")
    page.wait_for_selector("#model-select[data-loaded='true']")
    page.fill("#top-k", str(TOP_K))
    yield page
    context.close()
    assert not js_errors, f"JavaScript errors on the demo page: {js_errors}"


@pytest.fixture(scope="module")
def models(base_url: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{base_url}/models", timeout=30)
    resp.raise_for_status()
    body = resp.json()
    found = body["models"] if isinstance(body, dict) else body
    assert found, "the server fixture serves no models"
    return found


@pytest.fixture(scope="module")
def model(models: list[dict[str, Any]]) -> dict[str, Any]:
    """The model the page selects first: the server's default, else the first listed."""
    return next((m for m in models if m.get("default")), models[0])


def _digit_png(tmp_path: Path) -> Path:
    """A hand-made '7': thick white strokes on black, like MNIST, as a PNG file."""
    img = Image.new("L", (112, 112), 0)
    draw = ImageDraw.Draw(img)
    draw.line([(24, 22), (88, 22), (50, 94)], fill=255, width=12, joint="curve")
    path = tmp_path / "seven.png"
    img.save(path)
    return path


def _shown_predictions(page: Any) -> list[dict[str, Any]]:
    rows = page.locator("#predictions .prediction")
    rows.first.wait_for()
    return [
        {
            "label": row.get_attribute("data-label"),
            "index": int(row.get_attribute("data-index")),
            "score": float(row.get_attribute("data-score")),
            "text": row.inner_text(),
        }
        for row in rows.all()
    ]


def _check_shown(shown: list[dict[str, Any]], labels: list[str]) -> None:
    assert len(shown) == min(TOP_K, len(labels))
    scores = [p["score"] for p in shown]
    assert scores == sorted(scores, reverse=True)
    for p in shown:
        assert 0.0 <= p["score"] <= 1.0
        assert p["label"] == labels[p["index"]]
        assert p["label"] in p["text"]  # the label is visible beside its bar


def test_model_list_is_filled_from_the_api(
    page: Any, models: list[dict[str, Any]], model: dict[str, Any]
) -> None:
    options = page.locator("#model-select option")
    names = [options.nth(i).get_attribute("value") for i in range(options.count())]
    assert names == [m["name"] for m in models]
    assert page.input_value("#model-select") == model["name"]
    assert page.locator("label[for='model-select']").inner_text().strip() == "Model"
    assert page.locator("#error").is_hidden()


def test_drawing_a_digit_shows_predictions(page: Any, model: dict[str, Any]) -> None:
    canvas = page.locator("#draw-canvas")
    box = canvas.bounding_box()
    assert box is not None
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    # A "7": the top bar, then the diagonal down to the bottom.
    page.mouse.move(x + 0.25 * w, y + 0.2 * h)
    page.mouse.down()
    for fx, fy in [(0.5, 0.2), (0.75, 0.2), (0.62, 0.5), (0.5, 0.82)]:
        page.mouse.move(x + fx * w, y + fy * h, steps=8)
    page.mouse.up()
    lit = page.evaluate(
        """() => {
            const c = document.getElementById('draw-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] > 200) n++;
            return n / (c.width * c.height);
        }"""
    )
    assert 0.02 < lit < 0.5, f"the stroke should cover part of the canvas, covered {lit:.1%}"

    page.click("#predict-drawing")
    page.wait_for_selector("body[data-state='done']")
    _check_shown(_shown_predictions(page), model["labels"])
    assert page.locator("#error").is_hidden()

    page.click("#clear-canvas")
    assert page.evaluate(
        """() => {
            const c = document.getElementById('draw-canvas');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return d.every((v, i) => i % 4 === 3 || v === 0);
        }"""
    ), "Clear should leave an all-black canvas"


def test_uploaded_png_shows_what_the_api_returns(
    page: Any, base_url: str, model: dict[str, Any], tmp_path: Path
) -> None:
    png = _digit_png(tmp_path)
    page.set_input_files("#file-input", str(png))
    page.wait_for_selector("body[data-state='done']")
    shown = _shown_predictions(page)
    _check_shown(shown, model["labels"])

    resp = requests.post(
        f"{base_url}/predict",
        files={"file": ("seven.png", png.read_bytes(), "image/png")},
        data={"model": model["name"], "top_k": str(TOP_K)},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    expected = resp.json()["predictions"]
    assert [p["label"] for p in shown] == [p["label"] for p in expected]
    assert [p["index"] for p in shown] == [p["index"] for p in expected]
    # Batching may group the two requests differently; float kernels can differ in the last bits.
    assert [p["score"] for p in shown] == pytest.approx([p["score"] for p in expected], abs=1e-4)
    assert page.locator("#preview").is_visible()


def test_a_refused_file_shows_the_json_error(page: Any, base_url: str, tmp_path: Path) -> None:
    bogus = tmp_path / "not-an-image.png"
    bogus.write_bytes(b"this is text, not a PNG")
    page.set_input_files("#file-input", str(bogus))
    page.wait_for_selector("body[data-state='error']")

    resp = requests.post(
        f"{base_url}/predict",
        files={"file": ("not-an-image.png", bogus.read_bytes(), "image/png")},
        timeout=60,
    )
    assert 400 <= resp.status_code < 500
    code = resp.json()["error"]["code"]
    error = page.locator("#error")
    assert error.is_visible()
    assert page.get_attribute("#error", "role") == "alert"
    assert code in error.inner_text()
    assert str(resp.status_code) in error.inner_text()
    assert page.locator("#predictions .prediction").count() == 0
