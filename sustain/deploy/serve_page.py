"""The page `sustain serve` answers at ``/``: one self-contained HTML file (no CDN, no external
request) to try photos from a phone. It posts the chosen or captured photo to ``/predict`` as the
raw body and shows it with the top-3 classes, their probabilities and the bin (in the bin's
colour), a "check by hand" mark when the model's decision is ``review``, and the last few results.
"""

from __future__ import annotations

import html

HISTORY = 6

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sustain: which bin?</title>
<style>
*{box-sizing:border-box}
body{margin:0;font:16px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;color:#1d232a;background:#f4f6f8}
main{max-width:1100px;margin:0 auto;padding:16px}
h1{font-size:1.3rem;margin:0 0 12px}
.pick{display:block;padding:18px;border:2px dashed #8a99a8;border-radius:12px;text-align:center;background:#fff;
 cursor:pointer;font-weight:600}
.pick input{display:block;margin:10px auto 0;max-width:100%}
#token{width:100%;padding:8px;margin:8px 0;font:inherit}
#status{min-height:1.4em;margin:10px 0;color:#5a6672}
#status.error{color:#b00020;font-weight:600}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{background:#fff;border-radius:12px;padding:12px;border-left:8px solid var(--bin,#999);
 box-shadow:0 1px 3px #0002;min-width:0}
.card img{width:100%;max-height:260px;object-fit:contain;background:#eef1f4;border-radius:8px}
.bin{display:inline-block;padding:2px 10px;border-radius:999px;background:var(--bin,#999);color:#fff;font-weight:700}
.review{display:inline-block;margin-left:6px;padding:2px 10px;border-radius:999px;background:#ffd54f;color:#3a2a00;
 font-weight:700}
ol{padding-left:1.3em;margin:8px 0 0}
li{overflow-wrap:anywhere}
.bar{height:6px;background:#dfe5ea;border-radius:3px}.bar span{display:block;height:100%;background:var(--bin,#999);
 border-radius:3px}
.meta{color:#5a6672;font-size:.85rem;overflow-wrap:anywhere}
</style></head><body><main>
<h1>Which bin? <span class="meta">__MODEL__</span></h1>
__TOKEN__
<label class="pick">Choose or take a photo of one item
<input id="photo" type="file" accept="image/*" capture="environment"></label>
<div id="status" role="status"></div>
<section id="results" aria-live="polite"></section>
</main>
<script>
const COLOURS = {recycle:'#1565c0', compost:'#2e7d32', landfill:'#555f6b', special:'#c62828', donate:'#6a1b9a'};
const HISTORY = __HISTORY__;
const input = document.getElementById('photo'), statusEl = document.getElementById('status');
const results = document.getElementById('results'), tokenEl = document.getElementById('token');
if (tokenEl) { tokenEl.value = sessionStorage.getItem('sustain-token') || '';
  tokenEl.addEventListener('change', () => sessionStorage.setItem('sustain-token', tokenEl.value.trim())); }
function say(text, isError) { statusEl.textContent = text; statusEl.className = isError ? 'error' : ''; }
function el(tag, attrs, text) { const e = document.createElement(tag); Object.assign(e, attrs || {});
  if (text !== undefined) e.textContent = text; return e; }
function card(file, p) {
  const c = el('article', {className: 'card'}), colour = COLOURS[p.bin] || '#7b8794';
  c.style.setProperty('--bin', colour);
  c.append(el('img', {src: URL.createObjectURL(file), alt: file.name || 'photo'}));
  const head = el('p');
  head.append(el('strong', {className: 'top-class'}, p.topk[0]['class']), ' ');
  head.append(el('span', {className: 'bin'}, p.bin || 'no bin'));
  if (p.decision === 'review') head.append(el('span', {className: 'review', title: 'the model is not sure'}, '\\u26a0 check by hand'));
  c.append(head);
  const list = el('ol');
  for (const t of p.topk.slice(0, 3)) {
    const li = el('li', {}, `${t['class']} ${(100 * t.probability).toFixed(1)}%`);
    const bar = el('div', {className: 'bar'}), fill = el('span');
    fill.style.width = `${(100 * t.probability).toFixed(1)}%`; bar.append(fill); li.append(bar); list.append(li);
  }
  c.append(list, el('p', {className: 'meta'}, file.name || ''));
  return c;
}
input.addEventListener('change', async () => {
  const file = input.files[0]; if (!file) return;
  say('Classifying\\u2026');
  const headers = {'Content-Type': file.type || 'application/octet-stream'};
  const token = tokenEl ? tokenEl.value.trim() : '';
  if (token) headers.Authorization = `Bearer ${token}`;
  try {
    const r = await fetch('predict', {method: 'POST', headers, body: file});
    const body = await r.json();
    if (!r.ok) { say(body.error ? body.error.message : `HTTP ${r.status}`, true); return; }
    results.prepend(card(file, body.predictions[0]));
    while (results.children.length > HISTORY) results.lastChild.remove();
    say('');
  } catch (e) { say(`The server did not answer: ${e}`, true); }
  input.value = '';
});
</script></body></html>
"""

TOKEN_FIELD = ('<input id="token" type="password" autocomplete="current-password" '
               'placeholder="Access token (this server needs one)" aria-label="Access token">')


def page_html(model_name: str, needs_token: bool) -> str:
    return (PAGE.replace("__MODEL__", html.escape(model_name)).replace("__HISTORY__", str(HISTORY))
            .replace("__TOKEN__", TOKEN_FIELD if needs_token else ""))
