"""The error gallery as one HTML fragment: inside report.html, and in the notebook.

The fragment carries its own styles and no script; every picture is an
embedded JPEG (`sustain.evaluate.gallery.Thumbnails`) with alt text, so it works from
``file://`` and never makes a request. Tiles wrap in a grid and long paths
break anywhere, so nothing scrolls sideways on a laptop screen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..evaluate import (
    DEFAULT_METHOD,
    FIXED_GIVEN_MAX,
    FIXED_OTHER_MIN,
    PAIRS,
    PER_PAIR,
    SUSPECTS_CSV,
    SUSPECTS_SHOWN,
    TOP_MISTAKES,
    Sample,
    SamplePredictions,
    Thumbnails,
    confused_pairs,
    load_run_predictions,
    per_source,
    suspect_labels,
    suspect_masks,
    top_mistakes,
)
from ..utils import escape_html, wrap_html
from .paths import PathView

CSS = """
.sg-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6rem;margin:.5rem 0 1rem}
.sg-tile{margin:0;border:1px solid #ddd;border-radius:4px;padding:.3rem;font-size:.78rem;line-height:1.25;min-width:0}
.sg-tile img{display:block;margin:0 auto .25rem;width:128px;height:128px;max-width:100%;object-fit:contain;border:0}
.sg-none{height:96px;display:flex;align-items:center;justify-content:center;background:#f4f4f4;color:#777;text-align:center}
.sg-path{display:block;color:#777;font-size:.7rem;font-family:ui-monospace,monospace}
.sg-bad{color:#c62828} .sg-muted{color:#777} .sg-flag{background:#fdecea}
.sg-note{background:#fff8e1;border-left:4px solid #f0ad4e;padding:.4rem .8rem;margin:.3rem 0}
.sg-table{border-collapse:collapse;margin:.5rem 0} .sg-example img{float:left;width:48px;height:48px;object-fit:contain;margin-right:.4rem;border:0}
.sg-example{min-width:8rem}
@media (max-width:500px){.sg-table.wide,.sg-table.wide tbody,.sg-table.wide tr,.sg-table.wide td{display:block}
 .sg-table.wide tr:first-child{display:none} .sg-table.wide td{border:0}
 .sg-table.wide td[data-label]::before{content:attr(data-label) ": ";font-weight:600}} .sg-table td,.sg-table th{border:1px solid #ddd;padding:.2rem .5rem}
"""


SOURCE_COLUMNS = ("fine images", "accuracy", "other sources", "set images", "set accuracy", "suspects")


@dataclass
class Gallery:
    html: str
    suspects: list[Sample] = field(default_factory=list)
    thumbnails_bytes: int = 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def tile(s: Sample, thumbs: Thumbnails, show: Callable[[str], str] = str) -> str:
    """One image with its given and predicted label, probability, source and path (as `show` names it)."""
    uri = thumbs(s.path)
    alt = f"{s.split} image labelled {s.given}, predicted {s.predicted} ({_pct(s.p_predicted)}), source {s.source}"
    picture = (f'<img src="{uri}" alt="{escape_html(alt)}" loading="eager">' if uri else
               f'<div class="sg-none">{"image not readable" if s.path in thumbs.missing else "over the size budget"}</div>')
    return (f'<figure class="sg-tile">{picture}<figcaption>'
            f"label <b>{wrap_html(s.given)}</b> ({_pct(s.p_given)})<br>"
            f'predicted <b class="sg-bad">{wrap_html(s.predicted)}</b> ({_pct(s.p_predicted)})<br>'
            f'<span class="sg-muted">{wrap_html(s.source)} · {escape_html(s.split)}</span>'
            f'<span class="sg-path" title="{escape_html(show(s.path))}">{wrap_html(show(s.path))}</span>'
            "</figcaption></figure>")


SHOWN = 12  # tiles per grid on the page; the rest are one click away or in suspect_labels.csv


@dataclass
class _Tiles:
    """What every tile needs: the thumbnails and how the page names a file."""

    thumbs: Thumbnails
    show: Callable[[str], str] = str

    def mini(self, s: Sample) -> str:
        """A small picture and the file's name, for a table row."""
        uri = self.thumbs(s.path)
        alt = f"labelled {s.given}, predicted {s.predicted} ({_pct(s.p_predicted)})"
        picture = f'<img src="{uri}" alt="{escape_html(alt)}" loading="eager">' if uri else ""
        return f'{picture}<span class="sg-path" title="{escape_html(self.show(s.path))}">{wrap_html(self.show(s.path))}</span>'

    def grid(self, samples: Sequence[Sample], shown: int = SHOWN) -> str:
        first = "".join(tile(s, self.thumbs, self.show) for s in samples[:shown])
        rest = "".join(tile(s, self.thumbs, self.show) for s in samples[shown:])
        out = f'<div class="sg-grid">{first}</div>'
        return out + (f"<details><summary>{len(samples) - shown} more</summary>"
                      f'<div class="sg-grid">{rest}</div></details>' if rest else "")


def _mistakes(sp: SamplePredictions, n: int, tiles: _Tiles) -> tuple[str, set[str]]:
    worst = top_mistakes(sp, n)
    if not worst:
        return "<p>No wrong predictions among the fine-labelled images.</p>", set()
    return (f'<p class="sg-muted">The {len(worst)} most confident wrong predictions of the best weights '
            f"(fine-labelled images), most confident first.</p>" + tiles.grid(worst)), {s.path for s in worst}


def _pairs(sp: SamplePredictions, tiles: _Tiles, shown: set[str]) -> str:
    """Each pair once, with its count and one example that the top mistakes do not already show."""
    pairs = confused_pairs(sp, PAIRS, PER_PAIR)
    if not pairs:
        return "<p>No confusions.</p>"
    rows = []
    for t, p, n, examples in pairs:
        fresh = [e for e in examples if e.path not in shown]
        example = tiles.mini(fresh[0]) if fresh else '<span class="sg-muted">its examples are under top mistakes</span>'
        rows.append(f'<tr><td data-label="true class">{wrap_html(t)}</td><td data-label="predicted as">{wrap_html(p)}</td>'
                    f'<td class="num" data-label="images">{n}</td><td class="sg-example">{example}</td></tr>')
    return ('<table class="sg-table wide"><tr><th>true class</th><th>predicted as</th><th>images</th><th>one example</th>'
            f'</tr>{"".join(rows)}</table>')


def _suspects(stores: Sequence[SamplePredictions], suspects: list[Sample], tiles: _Tiles) -> str:
    scored = ", ".join(f"{sp.split} ({'in-sample' if sp.in_sample else 'held-out'}, {len(sp.paths)} images)"
                       for sp in stores)
    out = (f'<p class="sg-muted">Fine-labelled images are screened by cleanlab\'s confident learning '
           f"(<code>filter_by={DEFAULT_METHOD}</code>: per-class thresholds estimated from these predictions); "
           f"a set-labelled image is suspect when its set gets ≤ {_pct(FIXED_GIVEN_MAX)} of the probability while "
           f"one class outside it gets ≥ {_pct(FIXED_OTHER_MIN)}. Scored: {escape_html(scored)}. Review them in "
           f"<code>{SUSPECTS_CSV}</code> (docs/evaluation.md says how to feed fixes back).</p>")
    if any(sp.in_sample for sp in stores):
        out += ('<p class="sg-note">Train scores are <b>in-sample</b>: the model learned those labels, wrong '
                "ones included, so it flags fewer of them than a held-out score would. Treat train rows as a "
                "lower bound.</p>")
    else:
        out += ('<p class="sg-note">The train split is not screened: only held-out images are scored. '
                "<code>sustain evaluate --checkpoint RUN --split train</code> then <code>sustain report RUN</code> "
                "adds it, with in-sample (less trustworthy) scores.</p>")
    if not suspects:
        return out + "<p>No suspect labels.</p>"
    return out + (f"<p>{len(suspects)} suspect label(s), least probable label first:</p>"
                  + tiles.grid(suspects[:SUSPECTS_SHOWN]))


def _sources(sp: SamplePredictions, suspect: np.ndarray) -> str:
    views = per_source(sp, suspect=suspect)
    rows = []
    for v in views:
        confusions = "; ".join(f"{t} → {p} ({n})" for t, p, n in v.confusions) or "none"
        flag = " ⚠ below the other sources" if v.disagrees else ""
        cells = [v.n_fine, _pct(v.accuracy), _pct(v.others_accuracy), v.n_set, _pct(v.set_accuracy), v.n_suspect]
        rows.append(f'<tr class="{"sg-flag" if v.disagrees else ""}"><td>{wrap_html(v.source)}{flag}</td>'
                    + "".join(f'<td data-label="{h}">{c}</td>' for h, c in zip(SOURCE_COLUMNS, cells, strict=True))
                    + f'<td data-label="worst confusions">{wrap_html(confusions)}</td></tr>')
    head = "<tr><th>source</th>" + "".join(f"<th>{h}</th>" for h in SOURCE_COLUMNS) + "<th>worst confusions</th></tr>"
    return f'<table class="sg-table wide">{head}{"".join(rows)}</table>'


def render_gallery(stores: Sequence[SamplePredictions], n: int = TOP_MISTAKES,
                   thumbs: Thumbnails | None = None, heading: int = 2,
                   show: Callable[[str], str] = str) -> Gallery:
    """The gallery sections for the given prediction stores (val, test, and train when scored);
    `show` names a file on the page (`PathView.show`: relative to the data root)."""
    tiles = _Tiles(thumbs or Thumbnails(), show)
    h, sub = f"h{heading}", f"h{heading + 1}"
    if not stores:
        return Gallery(f"<{h}>Error gallery</{h}>" '<p class="sg-muted">No per-sample predictions '
                       "(predictions_val.npz): this run predates them; rerun the final evaluation to get the "
                       "gallery.</p>")
    masks = suspect_masks(stores)
    suspects = suspect_labels(stores, masks=masks)
    parts = [f"<style>{CSS}</style>"]
    for i, sp in enumerate(sp for sp in stores if not sp.in_sample):
        mistakes, shown = _mistakes(sp, n, tiles)
        section = (f"<{h}>Top mistakes ({escape_html(sp.split)})</{h}>{mistakes}"
                   f"<{sub}>Most-confused pairs ({escape_html(sp.split)})</{sub}>{_pairs(sp, tiles, shown)}")
        # The first held-out split open; the others one click away, to keep the page short.
        parts.append(section if i == 0 else f"<details><summary>Top mistakes and confused pairs "
                                            f"({escape_html(sp.split)})</summary>{section}</details>")
    parts.append(f"<{h}>Suspect labels</{h}>" + _suspects(stores, suspects, tiles))
    parts.append(f"<{h}>Per-source view</{h}>" + '<p class="sg-muted">A source well below the others on the same '
                 "taxonomy is how a mislabelled dataset shows up.</p>")
    (first, first_mask), *rest = zip(stores, masks, strict=True)  # the first split open, the others one click away
    parts.append(f"<{sub}>{escape_html(first.split)}</{sub}>" + _sources(first, first_mask))
    parts += [f"<details><summary>{escape_html(sp.split)}</summary>{_sources(sp, m)}</details>" for sp, m in rest]
    if tiles.thumbs.missing:
        parts.append(f'<p class="sg-note">{len(tiles.thumbs.missing)} image(s) could not be read for a thumbnail '
                     f"(moved or deleted since the run?), e.g. {escape_html(show(next(iter(tiles.thumbs.missing))))}</p>")
    if tiles.thumbs.over_budget:
        parts.append(f'<p class="sg-note">{tiles.thumbs.over_budget} thumbnail(s) left out to keep the report under '
                     f"{tiles.thumbs.budget / 1e6:.0f} MB.</p>")
    return Gallery("\n".join(parts), suspects, tiles.thumbs.used)


def build_gallery(run_dir: str | Path, n: int = TOP_MISTAKES, notes: list[str] | None = None,
                  view: PathView | None = None) -> Gallery:
    """The gallery of a run folder, from its ``predictions_*.npz`` alone (the notebook shows `.html`)."""
    local = notes is None  # the caller's notes are the caller's to show
    notes = [] if notes is None else notes
    view = view or PathView.of(run_dir)
    gallery = render_gallery(load_run_predictions(run_dir, notes), n, show=view.show)
    if local and notes:
        gallery.html = "".join(f'<p class="sg-note">{escape_html(view.text(x))}</p>' for x in notes) + gallery.html
    return gallery
