"""A real browser (Debian's Chromium, driven headless by Playwright) types a caption, clicks Generate and waits for
the images. Skipped when Chromium or Playwright is missing; `make test` installs both."""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_type_caption_click_generate_and_screenshot(tiny_zoo_dirs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from apps.demo import DemoApp, ModelZoo
    from apps.ui import CHROMIUM_ARGS, build_ui, launch_local

    app = DemoApp(ModelZoo(dict(tiny_zoo_dirs)), textgan_root=tmp_path / "none")
    demo = build_ui(app, comparison_dir=tmp_path / "cmp")
    url = launch_local(demo)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url, wait_until="networkidle")
            box = page.get_by_label("Caption (at most 300 characters)")
            box.fill("a big blue square to the left of a tiny yellow star")
            page.get_by_role("button", name="Generate", exact=True).click()
            # Each family's gallery fills with images; the status line reports per-model latency.
            page.wait_for_selector("text=AttnGAN:", timeout=60_000)
            imgs = page.locator("img[src*='/file=']")
            page.wait_for_function("document.querySelectorAll(\"img[src*='/file=']\").length >= 8", timeout=60_000)
            assert imgs.count() >= 8  # 4 images x 2 families
            shot = Path(os.environ.get("MMGAN_SCREENSHOT_DIR", tmp_path)) / "app_generate.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            browser.close()
    finally:
        demo.close()
