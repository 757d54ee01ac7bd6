"""The web page of ``shamisa serve`` driven in a real headless Chromium (Selenium): drop images, wait
for the scores, check their order against the API, open a quality map, compare two, download the CSV.

Skipped when Selenium, Chromium or chromedriver are missing (Debian: ``apt-get install chromium
chromium-driver``). With ``SHAMISA_SCREENSHOTS=1`` it also writes docs/images/serve-list.png and
docs/images/serve-map.png.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi", reason="the 'serve' extra (fastapi) is not installed")
pytest.importorskip("uvicorn", reason="the 'serve' extra (uvicorn) is not installed")
pytest.importorskip("httpx", reason="httpx is not installed")
pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"), shutil.which("google-chrome"))
                 if p), None)
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless browser test: needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
)

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO / "tests" / "fixtures" / "clive_mini" / "Images" / "1104.JPG"
SCREENSHOTS = os.environ.get("SHAMISA_SCREENSHOTS") == "1"
TIMEOUT = 120


def _png(x: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_images() -> dict[str, bytes]:
    """Four versions of one photo of clearly different quality, made with the project's distortions."""
    from shamisa.distortions import apply_distortion, severity_to_value
    from shamisa.images import load_image, resize

    x = resize(load_image(PHOTO), (384, 384))

    def distort(name: str, severity: float) -> torch.Tensor:
        v, _ = severity_to_value(name, torch.tensor([severity]))
        return apply_distortion(x[None], name, v.float(), torch.Generator().manual_seed(0))[0]

    half = x.clone()
    half[:, :, :192] = distort("gaublur", 4.0)[:, :, :192]
    return {
        "photo.png": _png(x),
        "photo-half-blur.png": _png(half),  # the left half blurred: its map shows where
        "photo-noise.png": _png(distort("whitenoise", 4.0)),
        "photo-blur.png": _png(distort("gaublur", 4.0)),
    }


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    import uvicorn

    import shamisa
    from shamisa.serve import ServeConfig, create_app

    app = create_app(shamisa.load("default", device="cpu"), ServeConfig(queue=8))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    assert srv.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(15)


@pytest.fixture(scope="module")
def browser(tmp_path_factory, server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium look for a driver on the network
    profile = tmp_path_factory.mktemp("chromium-profile")
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={profile}", "--window-size=1200,1000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.downloads = downloads  # type: ignore[attr-defined]
    try:
        yield driver
    finally:
        driver.quit()


DROP_JS = """
const files = arguments[0];
const dt = new DataTransfer();
for (const [name, b64] of files) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  dt.items.add(new File([bytes], name, {type: "image/png"}));
}
const target = document.getElementById("drop");
target.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
target.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
"""


def _wait(driver, cond, what: str, timeout: float = TIMEOUT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda d: cond(d), message=what)


def _shot(driver, name: str) -> None:
    if SCREENSHOTS:
        out = REPO / "docs" / "images" / name
        out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(out))


def test_drop_score_sort_map_compare_csv(server, browser, tmp_path):
    from selenium.webdriver.common.by import By

    images = make_images()
    # the API's own order, best first
    with httpx.Client(base_url=server, timeout=TIMEOUT) as c:
        r = c.post("/api/score", files=[("files", (n, d, "image/png")) for n, d in images.items()])
        assert r.status_code == 200, r.text
        api = sorted(r.json()["results"], key=lambda row: -row["score"])
    api_order = [row["path"] for row in api]
    assert api_order.index("photo.png") < api_order.index("photo-blur.png")  # the sharp photo beats its blur

    browser.get(server + "/")
    _wait(browser, lambda d: "model default" in d.find_element(By.ID, "model-info").text, "the model card")
    first = dict(list(images.items())[:3])
    browser.execute_script(DROP_JS, [[n, base64.b64encode(d).decode()] for n, d in first.items()])
    last_name, last_data = list(images.items())[3]
    pick = tmp_path / last_name
    pick.write_bytes(last_data)
    browser.find_element(By.ID, "file-input").send_keys(str(pick))  # the "choose files" path too

    _wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-done") == "true", "all scores")
    rows = browser.find_elements(By.CSS_SELECTOR, "#list li.item")
    assert [li.get_attribute("data-state") for li in rows] == ["done"] * 4
    assert [li.get_attribute("data-name") for li in rows] == api_order
    page_scores = [float(li.get_attribute("data-score")) for li in rows]
    assert page_scores == pytest.approx([row["score"] for row in api], abs=1e-6)
    assert browser.find_element(By.ID, "status").text.startswith("4 of 4 scored")
    assert all(browser.execute_script("return arguments[0].querySelector('img').naturalWidth", li) > 0 for li in rows)
    _shot(browser, "serve-list.png")

    # the quality map of the half-blurred photo, with the opacity slider
    target = api_order.index("photo-half-blur.png")
    rows[target].click()
    _wait(browser, lambda d: d.find_element(By.ID, "map-view").get_attribute("data-loaded") == "true", "the map")
    overlay = browser.find_element(By.ID, "map-overlay")
    _wait(browser, lambda d: d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", overlay) > 0,
          "the map image to render")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay) == 384
    assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.55)
    browser.execute_script("const s = document.getElementById('opacity'); s.value = 65;"
                           "s.dispatchEvent(new Event('input'));")
    assert float(overlay.value_of_css_property("opacity")) == pytest.approx(0.65)
    assert browser.find_element(By.ID, "map-title").text.startswith("photo-half-blur.png")
    rgb = np.asarray(Image.open(io.BytesIO(overlay.screenshot_as_png)).convert("RGB"), dtype=np.float64)
    w = rgb.shape[1]
    redness = rgb[..., 0] - rgb[..., 1]  # the map is red where quality is low
    assert redness[:, : w // 3].mean() > redness[:, -w // 3 :].mean()  # the blurred left half
    browser.execute_script("document.getElementById('map-view').scrollIntoView({block: 'start'});")
    time.sleep(0.5)
    _shot(browser, "serve-map.png")

    # two selected -> side by side
    boxes = browser.find_elements(By.CSS_SELECTOR, "#list li.item input[type=checkbox]")
    boxes[0].click()
    browser.find_elements(By.CSS_SELECTOR, "#list li.item input[type=checkbox]")[3].click()
    btn = browser.find_element(By.ID, "compare-btn")
    assert btn.is_enabled()
    btn.click()
    view = browser.find_element(By.ID, "compare-view")
    _wait(browser, lambda d: view.is_displayed(), "the comparison")
    captions = [f.text for f in view.find_elements(By.CSS_SELECTOR, "figcaption")]
    assert captions[0].startswith(api_order[0]) and captions[1].startswith(api_order[3])
    _wait(browser, lambda d: d.execute_script(
        "return [...document.querySelectorAll('#compare-view img.overlay')].every(i => i.complete && i.naturalWidth > 0)"),
        "both maps")

    # CSV download: the rows in page order with the CLI's columns
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(browser.downloads)})
    browser.find_element(By.ID, "csv-btn").click()
    csv_file = browser.downloads / "shamisa-scores.csv"
    _wait(browser, lambda d: csv_file.exists() and csv_file.stat().st_size > 0, "the CSV download", timeout=20)
    lines = csv_file.read_text().splitlines()
    assert lines[0] == "path,score,raw,width,height,flags,error"
    assert [line.split(",")[0] for line in lines[1:]] == api_order


def test_a_bad_file_shows_its_error_and_the_page_goes_on(server, browser):
    from selenium.webdriver.common.by import By

    browser.get(server + "/")
    _wait(browser, lambda d: "model" in d.find_element(By.ID, "model-info").text, "the page")
    good = make_images()["photo.png"]
    browser.execute_script(DROP_JS, [["broken.png", base64.b64encode(b"not an image").decode()],
                                     ["fine.png", base64.b64encode(good).decode()]])
    _wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-done") == "true", "both answers")
    rows = browser.find_elements(By.CSS_SELECTOR, "#list li.item")
    assert [li.get_attribute("data-state") for li in rows] == ["done", "error"]
    assert "not a recognised image format" in rows[1].text
    assert "1 failed" in browser.find_element(By.ID, "status").text
