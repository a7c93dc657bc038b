"""report.html in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it).

What a reader would notice is asserted on the rendered page, not on the HTML
text: every gallery image decodes, nothing scrolls sideways at 1280 px, and
the page requests nothing but itself and its embedded data.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from browser import chromium, render
from gallery_helpers import add_gallery
from test_report import make_run

from sustain.report.gallery_html import build_gallery

# Skipped where chromium is absent, except under .ci/run, which installs it and sets SUSTAIN_REQUIRE_CHROMIUM.
pytestmark = [pytest.mark.slow,  # a real browser process
              pytest.mark.skipif(chromium() is None and not os.environ.get("SUSTAIN_REQUIRE_CHROMIUM"),
                                 reason="chromium is not installed (apt-get install -y chromium)")]

PROBE = """(() => {
  const imgs = [...document.images];
  const gallery = imgs.filter(i => i.closest('.sg-tile'));
  return {
    images: imgs.length,
    gallery: gallery.length,
    undecoded: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt),
    without_alt: imgs.filter(i => !i.alt.trim()).length,
    scroll_width: document.documentElement.scrollWidth,
    client_width: document.documentElement.clientWidth,
    tiles_overflowing: [...document.querySelectorAll('.sg-tile')].filter(t => t.scrollWidth > t.clientWidth + 1).length,
    wider: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > 1280.5)
             .map(e => e.tagName + '.' + e.className).slice(0, 5),
  };
})()"""


def test_report_renders_in_chromium_decoded_narrow_and_offline(tmp_path: Path):
    run = tmp_path / "run"
    make_run(run)
    add_gallery(run)
    from sustain.report.writer import build_report

    report = build_report(run)

    page = render(report, PROBE, width=1280, height=900)
    p = page.probe
    assert p["gallery"] >= 48 and p["undecoded"] == [] and p["without_alt"] == 0
    assert p["scroll_width"] <= p["client_width"] == 1280, p["wider"]
    assert p["tiles_overflowing"] == 0  # long class names and paths wrap inside their tile
    outside = [u[:80] for u in page.requests if u != report.resolve().as_uri() and not u.startswith("data:")]
    assert outside == []


LAYOUT = """(() => {
  const w = document.documentElement.clientWidth;
  const els = [...document.querySelectorAll('body *')].filter(e => e.getClientRects().length);
  return {
    height: document.documentElement.scrollHeight,
    page_scrolls: document.documentElement.scrollWidth > w,
    scrolling: els.filter(e => e.scrollWidth > e.clientWidth + 1 && getComputedStyle(e).overflowX !== 'visible')
                  .map(e => e.tagName + '.' + e.className).slice(0, 5),
    past_edge: els.filter(e => e.getBoundingClientRect().right > w + 0.5).map(e => e.tagName + '.' + e.className).slice(0, 5),
    first_heading: document.querySelector('h2').textContent,
    glance: [...document.querySelectorAll('.glance li')].map(li => li.textContent),
  };
})()"""
MAX_HEIGHT_1300 = 6000  # px: the whole report of a 30-class run at a laptop's width


@pytest.mark.parametrize("width", [360, 800, 1300])
def test_report_fits_phone_tablet_and_laptop_without_sideways_scrolling(tmp_path: Path, width: int):
    """30 classes, the gallery of both held-out splits: nothing scrolls sideways, and the page stays short."""
    run = tmp_path / "run"
    make_run(run)
    add_gallery(run)
    from sustain.report.writer import build_report

    p = render(build_report(run), LAYOUT, width=width, height=900).probe
    assert not p["page_scrolls"] and p["scrolling"] == [] and p["past_edge"] == [], p
    assert 1 <= len(p["glance"]) <= 5 and p["first_heading"] == "Run summary"  # the summary opens the page
    if width == 1300:
        assert p["height"] <= MAX_HEIGHT_1300, p["height"]


def test_gallery_fragment_alone_blocks_nothing_and_fits(tmp_path: Path):
    """The notebook shows the same fragment; a page holding only it also fits 1280 px."""
    run = tmp_path / "run"
    run.mkdir()
    add_gallery(run, n_val=40, n_test=30)
    html = tmp_path / "fragment.html"
    html.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{build_gallery(run).html}'
                    "</body></html>", encoding="utf-8")
    p = render(html, PROBE, width=1280).probe
    assert p["gallery"] > 0 and p["undecoded"] == [] and p["scroll_width"] <= 1280, p["wider"]
