"""End to end in a real headless Chromium (Debian's `chromium`, driven by Playwright's bundled driver).

Upload an image on the served page, wait for the result, check the label against the model and that
the Grad-CAM overlay rendered; the screenshot is kept (in $CNNLAB_TEST_ARTIFACTS, else the test's tmp dir).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnlab.engine.predictor import Classifier
from cnnlab.serve.app import ServeConfig, create_app
from conftest import two_class_images
from test_serve import live_server

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (Debian package `chromium`; .ci/run installs it)")


def test_upload_shows_label_bars_and_overlay(trained_run, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    pytest.importorskip("cnnlab.insight.gradcam")
    run, _ = trained_run
    clf = Classifier.load(run)
    x, _ = two_class_images(2, 32, seed=11)
    img_path = tmp_path / "upload.png"
    Image.fromarray(x[0]).save(img_path)
    expected = clf.class_names[int(np.argmax(clf.predict_proba(x[:1])[0]))]
    artifacts = Path(os.environ.get("CNNLAB_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)

    with live_server(create_app(ServeConfig(model=str(run), backend="torch"))) as url, sync_api.sync_playwright() as pw:
        # A fresh profile per run (Playwright wants --user-data-dir through launch_persistent_context).
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
        )
        try:
            page = browser.new_page()
            outside = []  # the page must work offline: every request goes to our server
            page.on("request", lambda req: None if req.url.startswith(url) or req.url.startswith("blob:") else outside.append(req.url))
            page.goto(url + "/")
            page.wait_for_selector("#model-info:has-text('seed_cnn')")
            assert "circle, square" in page.inner_text("#model-info")
            page.set_input_files("#file", str(img_path))
            page.wait_for_selector("body[data-state='done']", timeout=60_000)
            assert page.inner_text("#label").startswith(expected)
            assert page.locator("#bars li").count() == 2
            natural = page.eval_on_selector("#overlay", "img => [img.complete, img.naturalWidth, img.naturalHeight]")
            assert natural == [True, 32, 32]
            page.screenshot(path=str(artifacts / "browser-upload.png"), full_page=True)
            assert not outside, outside
        finally:
            browser.close()
    assert (artifacts / "browser-upload.png").stat().st_size > 1000
