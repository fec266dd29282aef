"""The main job's pages in headless Chromium: the images load and nothing overflows the
page's width. Skipped only where no Chromium is installed (Debian: ``apt-get install
chromium``). The screenshots are kept beside the pages (``<page>.png``)."""

import json
import shutil
import subprocess

import pytest

from pyro_grad.harness.presentation.main_job import build_reports

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
WIDTH, HEIGHT = 1280, 2400

#: Appended to a copy of the page: once everything has loaded, it writes what it
#: measured into the DOM, which Chromium's --dump-dom prints.
CHECKS = """
<script>
window.addEventListener("load", () => {
  const page = document.documentElement;
  const images = [...document.images].map(i => ({ok: i.complete && i.naturalWidth > 0, width: i.naturalWidth}));
  const right = document.body.getBoundingClientRect().right;
  // A wide table scrolls inside its box (div.scroll): the box must fit, not the table.
  const wide = [...document.querySelectorAll("div.scroll, table, img, ul, p, pre")]
    .filter(e => !e.closest("div.scroll") || e.matches("div.scroll"))
    .filter(e => e.getBoundingClientRect().right > right + 1)
    .map(e => e.tagName + ": " + (e.textContent || "").slice(0, 40));
  const out = document.createElement("pre");
  out.id = "checks";
  out.textContent = JSON.stringify({images, wide, scrollWidth: page.scrollWidth, innerWidth: window.innerWidth});
  document.body.appendChild(out);
});
</script>
"""


def chromium(*arguments: str) -> str:
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--window-size={WIDTH},{HEIGHT}", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def measured(page) -> dict:
    probe = page.with_name(f"{page.stem}-probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECKS + "</body>"))
    dom = chromium("--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    start = dom.index('<pre id="checks">') + len('<pre id="checks">')
    return json.loads(dom[start:dom.index("</pre>", start)].replace("&quot;", '"').replace("&amp;", "&"))


@pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_the_index_and_a_model_page_load_their_images_and_fit_the_width(tmp_path):
    index = build_reports(str(tmp_path), num_steps=4, num_samples=10, seeds=(0,), checkpoints=1,
                          models=["two_bernoullis", "coin"])
    for page in (index, tmp_path / "two_bernoullis.html", tmp_path / "coin.html"):
        checks = measured(page)
        assert checks["scrollWidth"] <= checks["innerWidth"], (page.name, checks)
        assert checks["wide"] == [], (page.name, checks["wide"])
        assert all(image["ok"] for image in checks["images"]), (page.name, checks["images"])
        chromium(f"--screenshot={page.with_suffix('.png')}", page.as_uri())
        assert page.with_suffix(".png").stat().st_size > 10_000
    assert len(measured(tmp_path / "two_bernoullis.html")["images"]) >= 1
