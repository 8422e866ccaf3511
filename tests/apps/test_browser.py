"""A real browser (Debian's Chromium, driven headless by Playwright) types a caption, clicks Generate and waits for
the images. Skipped when Chromium or Playwright is missing; `make test` installs both."""

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_type_caption_click_generate_and_screenshot(tiny_zoo_dirs, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    from apps.demo import DemoApp, ModelZoo
    from apps.ui import build_ui

    app = DemoApp(ModelZoo(dict(tiny_zoo_dirs)), textgan_root=tmp_path / "none")
    demo = build_ui(app, comparison_dir=tmp_path / "cmp")
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, share=False, quiet=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--headless",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                ],  # fmt: skip
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
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
