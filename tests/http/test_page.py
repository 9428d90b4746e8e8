"""The page in a real browser: Debian's chromium, headless, driven by Playwright (never `playwright install`).

It opens `/` from a real server, draws digits on the pad with pointer events (mouse strokes), and expects the
drawn digit as the top answer; it checks the live panel, the explanation area (an overlay, or the
"not available" note where the server answers 501), a photo picked through the file input, and a
phone-sized window. Screenshots go to `$CNN_SCREENSHOT_DIR` (default: the test's tmp folder) for a person
to look at.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from tests.conftest import MODEL_NAME, digit_examples

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Strokes in pad coordinates (0..1): digits this model (LeNet-5 on the bundled digits) reads reliably when
# drawn by a hand on the pad; the server normalises them as MNIST was (20x20 box, centre of mass).
DIGITS = {
    "1": [[(0.5, 0.15), (0.5, 0.85)]],
    "0": [[(0.5, 0.15), (0.72, 0.3), (0.75, 0.6), (0.5, 0.85), (0.27, 0.6), (0.3, 0.3), (0.5, 0.15)]],
    "4": [[(0.6, 0.85), (0.6, 0.15), (0.25, 0.6)], [(0.2, 0.6), (0.78, 0.6)]],  # two strokes
}


@pytest.fixture(scope="module")
def browser():
    assert shutil.which(CHROMIUM) or Path(CHROMIUM).exists(), "chromium is installed by scripts/setup.sh --system"
    profile = tempfile.mkdtemp(prefix="cnn-chromium-")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900},
            offline=False,
        )
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shots(tmp_path) -> Path:
    d = Path(os.environ.get("CNN_SCREENSHOT_DIR", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


def draw(page, strokes) -> None:
    box = page.locator("#pad").bounding_box()

    def at(x: float, y: float) -> tuple[float, float]:
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    for pts in strokes:
        page.mouse.move(*at(*pts[0]))
        page.mouse.down()
        for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
            for i in range(1, 13):
                t = i / 12
                page.mouse.move(*at(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t))
        page.mouse.up()


def top_answer(page) -> str:
    page.wait_for_function("document.querySelector('#status').textContent.includes('round trip')", timeout=30_000)
    return page.inner_text("#bars li.top .label").strip()


def test_draw_digits_and_see_them_recognised(http_server, browser, shots):
    page = browser.new_page()
    external: list[str] = []
    page.on(
        "request",
        lambda r: external.append(r.url) if not r.url.startswith((http_server.url, "data:", "blob:")) else None,
    )
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(http_server.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    assert page.input_value("#model") == MODEL_NAME
    for digit, strokes in DIGITS.items():
        page.click("#clear")
        page.evaluate("document.querySelector('#status').textContent = ''")
        draw(page, strokes)
        assert top_answer(page).split()[0] == digit, f"drew {digit}: {page.inner_text('#status')}"
        bars = page.locator("#bars li")
        assert bars.count() == 5
        first = bars.nth(0).inner_text()
        assert "%" in first and "top" in first  # numbers and a text marker, not colour alone
        assert "after preprocessing" in page.inner_text("#seen-caption")  # what the model saw is drawn
        page.screenshot(path=str(shots / f"page-drawn-{digit}.png"), full_page=True)
    # the explanation area: an overlay image or the 501 note, never an error
    page.wait_for_function("document.querySelector('#cam-caption').textContent.length > 0")
    caption = page.inner_text("#cam-caption")
    assert (
        "not available" in caption or not page.locator("#overlay").is_hidden() or not page.locator("#heat").is_hidden()
    )
    # the live panel reads the server's counters
    page.wait_for_function("document.querySelector('#live-total').textContent !== '–'", timeout=10_000)
    assert int(page.inner_text("#live-total")) >= len(DIGITS)
    assert not external, f"the page loaded something from elsewhere: {external}"
    assert not errors, errors
    page.close()


def test_pick_a_photo_and_phone_layout(http_server, browser, shots):
    page = browser.new_page()
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(http_server.url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    photo = next(p for p in digit_examples() if p.name.startswith("3_"))
    page.set_input_files("#file", str(photo))
    assert top_answer(page).split()[0] == "3"
    # one column on a phone: the pad fits the window, nothing overflows sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] <= 390 and pad["width"] >= 200
    page.screenshot(path=str(shots / "page-phone.png"), full_page=True)
    page.close()
