"""Screenshots of the demo app on the bundled weights, for the README: a real browser (Debian's Chromium, headless,
driven by Playwright) types a caption, clicks Generate, waits for every family's images and saves the page; then it
opens the Compare tab and saves that too. Only 127.0.0.1 is contacted.

    python benchmarks/app_screenshot.py --out docs/images          # needs `apt-get install chromium` (make browser)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="docs/images", help="folder for app_generate.png and app_compare.png")
    p.add_argument("--caption", default="a large yellow star left of a large green heart")
    p.add_argument("--chromium", default=os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium"))
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(args.chromium).exists():
        raise SystemExit(f"no Chromium at {args.chromium}: apt-get install chromium (or `make browser`)")
    from playwright.sync_api import sync_playwright

    from apps.demo import DemoApp
    from apps.ui import CHROMIUM_ARGS, build_ui, launch_local

    app = DemoApp()
    names = app.zoo.names
    demo = build_ui(app)
    url = launch_local(demo)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url, wait_until="networkidle")
            page.get_by_label("Caption (at most 300 characters)").fill(args.caption)
            page.get_by_role("button", name="Generate", exact=True).click()
            want = 4 * len(names)  # 4 images per installed family (the default)
            page.wait_for_function(f"document.querySelectorAll(\"img[src*='/file=']\").length >= {want}",
                                   timeout=300_000)  # fmt: skip
            page.wait_for_timeout(1000)
            page.screenshot(path=str(out / "app_generate.png"), full_page=True)
            page.get_by_role("tab", name="Compare").click()
            page.wait_for_timeout(2000)
            page.screenshot(path=str(out / "app_compare.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {out / 'app_generate.png'} and {out / 'app_compare.png'} ({', '.join(names)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
