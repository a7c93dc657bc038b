"""The error gallery as one HTML fragment: inside report.html, and in the notebook.

The fragment carries its own styles and no script; every picture is an
embedded JPEG (`sustain.evaluate.gallery.Thumbnails`) with alt text, so it works from
``file://`` and never makes a request. Tiles wrap in a grid and long paths
break anywhere, so nothing scrolls sideways on a laptop screen.
"""

from __future__ import annotations

from collections.abc import Sequence
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
from ..utils import escape_html

CSS = """
.sg-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));gap:.6rem;margin:.5rem 0 1rem}
.sg-tile{margin:0;border:1px solid #ddd;border-radius:4px;padding:.3rem;font-size:.78rem;line-height:1.25;min-width:0;
 overflow-wrap:anywhere}
.sg-tile img{display:block;margin:0 auto .25rem;width:128px;height:128px;max-width:100%;object-fit:contain;border:0}
.sg-none{height:96px;display:flex;align-items:center;justify-content:center;background:#f4f4f4;color:#777;text-align:center}
.sg-path{display:block;color:#777;font-size:.7rem;overflow-wrap:anywhere;font-family:ui-monospace,monospace}
.sg-bad{color:#c62828} .sg-muted{color:#777} .sg-flag{background:#fdecea}
.sg-note{background:#fff8e1;border-left:4px solid #f0ad4e;padding:.4rem .8rem;margin:.3rem 0}
.sg-table{border-collapse:collapse;margin:.5rem 0} .sg-table td,.sg-table th{border:1px solid #ddd;padding:.2rem .5rem}
"""


@dataclass
class Gallery:
    html: str
    suspects: list[Sample] = field(default_factory=list)
    thumbnails_bytes: int = 0


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def tile(s: Sample, thumbs: Thumbnails) -> str:
    """One image with its given and predicted label, probability, source and path."""
    uri = thumbs(s.path)
    alt = f"{s.split} image labelled {s.given}, predicted {s.predicted} ({_pct(s.p_predicted)}), source {s.source}"
    picture = (f'<img src="{uri}" alt="{escape_html(alt)}" loading="eager">' if uri else
               f'<div class="sg-none">{"image not readable" if s.path in thumbs.missing else "over the size budget"}</div>')
    return (f'<figure class="sg-tile">{picture}<figcaption>'
            f"label <b>{escape_html(s.given)}</b> ({_pct(s.p_given)})<br>"
            f'predicted <b class="sg-bad">{escape_html(s.predicted)}</b> ({_pct(s.p_predicted)})<br>'
            f'<span class="sg-muted">{escape_html(s.source)} · {escape_html(s.split)}</span>'
            f'<span class="sg-path" title="{escape_html(s.path)}">{escape_html(s.path)}</span></figcaption></figure>')


def _grid(samples: Sequence[Sample], thumbs: Thumbnails) -> str:
    return '<div class="sg-grid">' + "".join(tile(s, thumbs) for s in samples) + "</div>"


def _mistakes(sp: SamplePredictions, n: int, thumbs: Thumbnails) -> str:
    worst = top_mistakes(sp, n)
    if not worst:
        return "<p>No wrong predictions among the fine-labelled images.</p>"
    return (f'<p class="sg-muted">The {len(worst)} most confident wrong predictions of the best weights '
            f"(fine-labelled images), most confident first.</p>" + _grid(worst, thumbs))


def _pairs(sp: SamplePredictions, thumbs: Thumbnails) -> str:
    pairs = confused_pairs(sp, PAIRS, PER_PAIR)
    if not pairs:
        return "<p>No confusions.</p>"
    return "".join(f"<h4>{escape_html(t)} → {escape_html(p)} <span class=\"sg-muted\">({n} image{'s' * (n != 1)})</span></h4>"
                   + _grid(examples, thumbs) for t, p, n, examples in pairs)


def _suspects(stores: Sequence[SamplePredictions], suspects: list[Sample], thumbs: Thumbnails) -> str:
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
    return out + (f"<p>{len(suspects)} suspect label(s); the first {min(len(suspects), SUSPECTS_SHOWN)}, "
                  "least probable label first:</p>" + _grid(suspects[:SUSPECTS_SHOWN], thumbs))


def _sources(sp: SamplePredictions, suspect: np.ndarray) -> str:
    views = per_source(sp, suspect=suspect)
    rows = []
    for v in views:
        confusions = "; ".join(f"{t} → {p} ({n})" for t, p, n in v.confusions) or "none"
        flag = " ⚠ below the other sources" if v.disagrees else ""
        rows.append(f'<tr class="{"sg-flag" if v.disagrees else ""}"><td>{escape_html(v.source)}{flag}</td>'
                    f"<td>{v.n_fine}</td><td>{_pct(v.accuracy)}</td><td>{_pct(v.others_accuracy)}</td>"
                    f"<td>{v.n_set}</td><td>{_pct(v.set_accuracy)}</td><td>{v.n_suspect}</td>"
                    f"<td>{escape_html(confusions)}</td></tr>")
    head = ("<tr><th>source</th><th>fine images</th><th>accuracy</th><th>other sources</th><th>set images</th>"
            "<th>set accuracy</th><th>suspects</th><th>worst confusions</th></tr>")
    return f'<table class="sg-table">{head}{"".join(rows)}</table>'


def render_gallery(stores: Sequence[SamplePredictions], n: int = TOP_MISTAKES,
                   thumbs: Thumbnails | None = None, heading: int = 2) -> Gallery:
    """The gallery sections for the given prediction stores (val, test, and train when scored)."""
    thumbs = thumbs or Thumbnails()
    h, sub = f"h{heading}", f"h{heading + 1}"
    if not stores:
        return Gallery(f"<{h}>Error gallery</{h}>" '<p class="sg-muted">No per-sample predictions '
                       "(predictions_val.npz): this run predates them; rerun the final evaluation to get the "
                       "gallery.</p>")
    held_out = [sp for sp in stores if not sp.in_sample]
    masks = suspect_masks(stores)
    suspects = suspect_labels(stores, masks=masks)
    parts = [f"<style>{CSS}</style>"]
    for sp in held_out:
        parts.append(f"<{h}>Top mistakes ({escape_html(sp.split)})</{h}>" + _mistakes(sp, n, thumbs))
        parts.append(f"<{sub}>Most-confused pairs ({escape_html(sp.split)}), with examples</{sub}>" + _pairs(sp, thumbs))
    parts.append(f"<{h}>Suspect labels</{h}>" + _suspects(stores, suspects, thumbs))
    parts.append(f"<{h}>Per-source view</{h}>" + '<p class="sg-muted">A source well below the others on the same '
                 "taxonomy is how a mislabelled dataset shows up.</p>")
    parts += [f"<{sub}>{escape_html(sp.split)}</{sub}>" + _sources(sp, m) for sp, m in zip(stores, masks, strict=True)]
    if thumbs.missing:
        parts.append(f'<p class="sg-note">{len(thumbs.missing)} image(s) could not be read for a thumbnail '
                     f"(moved or deleted since the run?), e.g. {escape_html(next(iter(thumbs.missing)))}</p>")
    if thumbs.over_budget:
        parts.append(f'<p class="sg-note">{thumbs.over_budget} thumbnail(s) left out to keep the report under '
                     f"{thumbs.budget / 1e6:.0f} MB.</p>")
    return Gallery("\n".join(parts), suspects, thumbs.used)


def build_gallery(run_dir: str | Path, n: int = TOP_MISTAKES, notes: list[str] | None = None) -> Gallery:
    """The gallery of a run folder, from its ``predictions_*.npz`` alone (the notebook shows `.html`)."""
    local = notes is None  # the caller's notes are the caller's to show
    notes = [] if notes is None else notes
    gallery = render_gallery(load_run_predictions(run_dir, notes), n)
    if local and notes:
        gallery.html = "".join(f'<p class="sg-note">{escape_html(x)}</p>' for x in notes) + gallery.html
    return gallery
