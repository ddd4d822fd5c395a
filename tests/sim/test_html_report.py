"""``report.html``: one self-contained page, rendered in a real headless browser (Debian's Chromium,
which ``.ci/run`` installs; skipped where there is none)."""
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

from clitools import edit, run_cli


class _Counter(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.srcs, self.links = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.srcs.append(attrs.get("src", ""))
        if tag == "a":
            self.links.append(attrs.get("href", ""))


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("html")
    out = tmp / "out"
    proc = run_cli(tmp, edit(lambda d: d.update(models=["tiny-llama"])), "--out", str(out),
                   "--timeline", "kvr-e,4,256")
    assert proc.returncode == 0, proc.stderr
    return out, (out / "report.html").read_text(encoding="utf-8")


def test_the_page_holds_every_table_and_plot_and_needs_no_network(page):
    out, text = page
    parsed = _Counter()
    parsed.feed(text)
    pngs = sorted(f for f in os.listdir(out) if f.endswith(".png"))
    assert parsed.tags.count("table") == 2  # tiny-llama on two clusters
    assert len(parsed.srcs) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in parsed.srcs)
    assert parsed.links == ["timeline_kvr-e_4gpu_256_tiny-llama_fast.trace.json"]
    assert not re.search(r"(src|href)=\"https?://", text)  # nothing fetched from a network


def test_the_page_renders_in_a_headless_browser(page, tmp_path):
    out, _ = page
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium here (.ci/run installs Debian's chromium)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<table") == 2 and "tiny-llama on fast" in dom and dom.count("<img") >= 4
    shot = tmp_path / "page.png"
    subprocess.run([browser, *flags, "--window-size=1200,1600", f"--screenshot={shot}", url], capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 20_000  # a page with pictures, not a blank one
