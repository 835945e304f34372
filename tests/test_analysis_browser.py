"""The HTML report in a real browser: headless Chromium (Debian's ``chromium``; ``.ci/run``
installs it when missing) opens ``report.html`` of the fake study's report at 800 px wide.
Every ``<img>`` must have loaded (``naturalWidth > 0``), the page must not scroll sideways
(a wide table scrolls inside its own box), and a full-page screenshot is saved in the test's
temporary folder.

Chromium is driven from the command line: ``--dump-dom`` prints the DOM after the page has
loaded, so a small script, added to a copy of the page next to it (the same relative image
paths), writes what it measured into the DOM on the ``load`` event; ``--screenshot`` takes the
picture.
"""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

WIDTH = 800
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars")
CHECK_ID = "browser-check"
CHECK_SCRIPT = f"""<script>
window.addEventListener("load", () => {{
  const out = document.createElement("pre");
  out.id = "{CHECK_ID}";
  out.textContent = JSON.stringify({{
    images: Array.from(document.images).map(i => ({{src: i.getAttribute("src"),
                                                   naturalWidth: i.naturalWidth}})),
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
    height: document.documentElement.scrollHeight,
  }});
  document.body.appendChild(out);
}});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


pytestmark = pytest.mark.skipif(
    chromium() is None,
    reason="no Chromium on PATH: `apt-get install -y chromium` (Debian; .ci/run installs it)")


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """One headless Chromium call with a fresh profile folder."""
    profile.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    import fake_study
    from analysis.report import make_report
    from analysis.runs import load_runs

    root = tmp_path_factory.mktemp("browser")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    fake_study.make_fake_study(uri, "tiny", artifact_location=(root / "artifacts").as_uri())
    return make_report(load_runs(uri, "tiny"), root / "report", log_artifacts=False)


def test_the_html_report_loads_every_image_and_fits_800_px(report, tmp_path):
    page = (report / "report.html").read_text()
    check = report / "browser-check.html"   # next to report.html: the same image paths
    check.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    done = _chromium([f"--window-size={WIDTH},1000", "--dump-dom", check.as_uri()],
                     tmp_path / "profile-dom")
    found = re.search(rf'<pre id="{CHECK_ID}">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the check script wrote nothing; Chromium said: {done.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert len(seen["images"]) == page.count("<img ") == 5
    broken = [i["src"] for i in seen["images"] if i["naturalWidth"] <= 0]
    assert not broken, f"images that did not load: {broken}"
    assert seen["innerWidth"] == WIDTH
    assert seen["scrollWidth"] <= WIDTH, "the page scrolls sideways at 800 px"

    shot = tmp_path / "report-800px.png"
    height = min(int(seen["height"]), 16000)
    _chromium([f"--window-size={WIDTH},{height}", f"--screenshot={shot}",
               (report / "report.html").as_uri()], tmp_path / "profile-shot")
    assert png_size(shot) == (WIDTH, height) and shot.stat().st_size > 50_000
