"""`sustain serve` as a user meets it: a real server process on a free port, real HTTP, real uploads.

One exported tiny run serves most tests (module fixture); the token rule and the graceful stop
start their own processes. The page is driven in headless Chromium (tests/browser.py).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from browser import chromium, render
from eval_helpers import SMALL, tiny_model, write_images
from PIL import Image
from test_export import make_run

from sustain import Predictor
from sustain.deploy.export import export_run

pytestmark = pytest.mark.slow  # server processes

ROOT = Path(__file__).resolve().parents[2]
LIMITS = ["--max-upload-mb", "1", "--max-images", "4", "--max-pixels", "1000000"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`sustain serve` in a subprocess; its output in a file, its uploads' temp dir watched."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmpdir = tmp / "server_tmp"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.log = tmp / f"serve_{self.port}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(self.tmpdir)}
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "sustain", "serve", *args, "--port", str(self.port)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.output()
            try:
                if httpx.get(f"{self.url}/health", timeout=2).json()["ready"]:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(self.output())

    def output(self) -> str:
        return self.log.read_text()

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health").json()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    run = make_run(tmp_path_factory.mktemp("serve"), tiny_model(SMALL.num_classes))
    export_run(run, ["onnx"])
    held_out = {"lake_c": {"acc": 0.4, "n_fine": 5, "set_acc": None, "n_set": 0}}
    (run / "ood_classification_report.json").write_text(json.dumps(
        {"split": "ood", "accuracy": 0.4, "n_fine": 5, "per_source_accuracy": held_out}))
    return run


@pytest.fixture(scope="module")
def server(run: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = Server(tmp_path_factory.mktemp("srv"), str(run), "--max-wait-ms", "100", *LIMITS)
    yield srv
    assert srv.stop() == 0, srv.output()


@pytest.fixture(scope="module")
def photos(run: Path) -> list[Path]:
    return write_images(run.parent / "photos", 6, seed=21)


def expected(run: Path, paths: list[Path]) -> list[list[str]]:
    return [[c for c, _ in p.topk] for p in Predictor.from_checkpoint(run / "export", "cpu", "onnx").predict(paths)]


# --------------------------------------------------------------------------- the API


def test_predict_health_and_model(server: Server, run: Path, photos: list[Path]):
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in photos[:3]]
    r = httpx.post(f"{server.url}/predict", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert [p["file"] for p in body["predictions"]] == [p.name for p in photos[:3]]
    assert [[t["class"] for t in p["topk"]] for p in body["predictions"]] == expected(run, photos[:3])
    first = body["predictions"][0]
    assert first["bin"] == SMALL.bin_of(first["topk"][0]["class"]) and len(first["topk"]) == 3
    assert set(body["model"]) == {"name", "export_hash", "classes_hash"} and body["model"]["name"] == "test_vit"

    raw = httpx.post(f"{server.url}/predict", content=photos[0].read_bytes(), headers={"Content-Type": "image/png"})
    assert raw.json()["predictions"][0]["topk"] == first["topk"]

    health = server.health()
    assert health["status"] == "ok" and health["ready"] is True and health["model"] == body["model"]
    facts = httpx.get(f"{server.url}/model").json()
    assert facts["classes"] == list(SMALL.classes) and facts["input_size"] == [3, 32, 32]
    assert facts["precision"] == "fp32" and facts["backend"] == "onnx" and facts["parity_gate_passed"] is True
    report = json.loads((run / "test_classification_report.json").read_text())
    assert facts["test_accuracy"] == pytest.approx(report["accuracy"])
    assert facts["held_out_source_accuracy"] == {"accuracy": 0.4, "n_fine": 5,
                                                 "per_source": {"lake_c": {"acc": 0.4, "n_fine": 5, "set_acc": None,
                                                                           "n_set": 0}}}
    assert "/predict" in httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert httpx.get(f"{server.url}/docs").status_code == 200
    started = server.output()
    assert f"http://127.0.0.1:{server.port}/" in started and "backend onnx" in started
    assert body["model"]["export_hash"] in started


def test_concurrent_requests_are_batched_and_answered_correctly(server: Server, run: Path, photos: list[Path]):
    before = server.health()

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.gather(*[client.post("/predict", content=p.read_bytes(),
                                                      headers={"Content-Type": "image/png"}) for p in photos])

    answers = asyncio.run(fire())
    after = server.health()
    assert [r.status_code for r in answers] == [200] * len(photos)
    assert [[t["class"] for t in r.json()["predictions"][0]["topk"]] for r in answers] == expected(run, photos)
    assert after["images_scored"] - before["images_scored"] == len(photos)
    assert after["forward_passes"] - before["forward_passes"] < len(photos)  # batched: fewer passes than requests


# --------------------------------------------------------------------------- hostile input


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def bad_requests(photo: bytes) -> dict[str, tuple[dict, int, str]]:
    """name: (httpx.post keyword arguments, status, error code)."""
    bomb = png(Image.new("1", (8_000, 8_000)))  # 64 million pixels (over the 1 million allowed here) in a few kB
    one = lambda name, data, kind="image/jpeg": {"files": [("file", (name, data, kind))]}  # noqa: E731
    return {
        "not an image": (one("notes.jpg", b"just some text, not a photo" * 10), 400, "not_an_image"),
        "truncated": (one("cut.png", photo[: len(photo) // 2]), 400, "truncated"),
        "zero bytes": (one("empty.jpg", b""), 400, "zero_bytes"),
        "bomb": (one("bomb.png", bomb), 413, "too_many_pixels"),
        "over the size limit": (one("big.jpg", os.urandom(1_200_000)), 413, "too_large"),
        "too many images": ({"files": [("file", (f"{i}.png", photo, "image/png")) for i in range(5)]},
                            413, "too_many_images"),
        "wrong content type": ({"content": photo, "headers": {"Content-Type": "text/plain"}}, 415,
                               "wrong_content_type"),
    }


def test_bad_uploads_get_a_clear_4xx_and_good_ones_keep_working(server: Server, run: Path, photos: list[Path]):
    good = photos[0].read_bytes()
    want = expected(run, photos[:1])[0]
    before = set(server.tmpdir.iterdir())
    for name, (kwargs, status, code) in bad_requests(good).items():
        r = httpx.post(f"{server.url}/predict", timeout=30, **kwargs)
        assert r.status_code == status, (name, r.text)
        assert r.json()["error"]["code"] == code and r.json()["error"]["message"], name
        ok = httpx.post(f"{server.url}/predict", content=good, headers={"Content-Type": "image/png"})
        assert [t["class"] for t in ok.json()["predictions"][0]["topk"]] == want, name  # interleaved
    assert "bomb.png" in httpx.post(f"{server.url}/predict", **bad_requests(good)["bomb"][0]).json()["error"]["message"]
    assert set(server.tmpdir.iterdir()) == before  # nothing written to disk
    assert server.proc.poll() is None and server.health()["ready"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_an_oversized_body_is_refused_while_streaming(server: Server):
    def chunks():  # 40 MB with no Content-Length: the server must count as it reads, and keep nothing
        for _ in range(640):
            yield b"\0" * 65536

    before = rss_mb(server.proc.pid)
    r = httpx.post(f"{server.url}/predict", content=chunks(), headers={"Content-Type": "image/jpeg"}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "too_large" and "1 MB" in r.json()["error"]["message"]
    assert rss_mb(server.proc.pid) - before < 20  # the 40 MB were never held
    assert server.proc.poll() is None and server.health()["ready"]


# --------------------------------------------------------------------------- binding, token, stop


def test_other_addresses_need_a_token_file(run: Path, run_cli):
    refused = run_cli("serve", run, "--host", "0.0.0.0")
    assert refused.code == 2 and "--token-file" in refused.output and "0.0.0.0" in refused.output


def test_token_guards_all_but_health_and_sigterm_drains_then_exits_0(run: Path, photos: list[Path], tmp_path: Path):
    token = "s3cret-token-for-the-pilot-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    srv = Server(tmp_path, str(run), "--token-file", str(tmp_path / "token"), "--max-wait-ms", "1500")
    try:
        body = {"content": photos[0].read_bytes(), "headers": {"Content-Type": "image/png"}}
        assert httpx.post(f"{srv.url}/predict", **body).status_code == 401
        assert httpx.get(f"{srv.url}/model").status_code == 401
        wrong = {**body, "headers": {**body["headers"], "Authorization": "Bearer nope"}}
        assert httpx.post(f"{srv.url}/predict", **wrong).status_code == 401
        assert srv.health()["ready"]
        authorised = {**body, "headers": {**body["headers"], "Authorization": f"Bearer {token}"}}

        async def in_flight_then_stop() -> httpx.Response:
            async with httpx.AsyncClient(timeout=60) as client:
                request = asyncio.create_task(client.post(f"{srv.url}/predict", **authorised))
                await asyncio.sleep(0.7)  # the image now waits in the batcher (--max-wait-ms 1500)
                srv.proc.send_signal(signal.SIGTERM)
                return await request

        answer = asyncio.run(in_flight_then_stop())
        assert answer.status_code == 200 and answer.json()["predictions"][0]["bin"]
        assert srv.proc.wait(timeout=60) == 0, srv.output()
        assert "Stopped" in srv.output()
    finally:
        srv.stop()


# --------------------------------------------------------------------------- the page


pytest_chromium = pytest.mark.skipif(chromium() is None and not os.environ.get("SUSTAIN_REQUIRE_CHROMIUM"),
                                     reason="chromium is not installed (apt-get install -y chromium)")

UPLOAD_PROBE = """(async () => {
  const bytes = Uint8Array.from(atob('%s'), c => c.charCodeAt(0));
  const input = document.getElementById('photo');
  const dt = new DataTransfer();
  dt.items.add(new File([bytes], 'demo.jpg', {type: 'image/jpeg'}));
  input.files = dt.files;
  input.dispatchEvent(new Event('change'));
  for (let i = 0; i < 200 && !document.querySelector('.card .top-class'); i++) await new Promise(r => setTimeout(r, 100));
  const card = document.querySelector('.card');
  return {
    accept: input.accept, capture: input.getAttribute('capture'),
    top: card && card.querySelector('.top-class').textContent,
    bin: card && card.querySelector('.bin').textContent,
    rows: card ? card.querySelectorAll('li').length : 0,
    decoded: card ? card.querySelector('img').complete : false,
    status: document.getElementById('status').textContent,
    scroll_width: document.documentElement.scrollWidth, client_width: document.documentElement.clientWidth,
  };
})()"""


@pytest_chromium
@pytest.mark.parametrize("width", [360, 1300])
def test_page_uploads_a_photo_and_shows_the_class_and_bin(server: Server, width: int):
    import base64

    from sustain.data.demo_images import class_style, render_image

    buf = io.BytesIO()
    render_image(class_style(0), np.random.default_rng(0), size=96).save(buf, "JPEG", quality=90)
    api = httpx.post(f"{server.url}/predict", content=buf.getvalue(), headers={"Content-Type": "image/jpeg"}).json()
    page = render(f"{server.url}/", UPLOAD_PROBE % base64.b64encode(buf.getvalue()).decode(), width=width)
    p = page.probe
    assert p["top"] == api["predictions"][0]["topk"][0]["class"], p
    assert p["bin"] == api["predictions"][0]["bin"] and p["rows"] == 3 and p["decoded"]
    assert p["accept"] == "image/*" and p["capture"] == "environment"
    assert p["scroll_width"] <= p["client_width"] == width  # usable on a phone: nothing scrolls sideways
    outside = [u for u in page.requests if not u.startswith((server.url, "blob:", "data:"))]
    assert outside == []  # no CDN


# --------------------------------------------------------------------------- the model behind it


def test_torch_backend_serves_the_run_and_threads_fit_the_cores(run: Path, photos: list[Path]):
    from sustain.deploy.serve import predict_fn
    from sustain.deploy.serve_model import load_served_model, model_facts, plan_threads
    from sustain.errors import UsageError

    served = load_served_model(run, "torch", 1)
    answers = predict_fn(served, 3)([Image.open(p).convert("RGB") for p in photos[:3]])
    assert [[t["class"] for t in a["topk"]] for a in answers] == expected(run, photos[:3])
    facts = model_facts(served)
    assert facts["backend"] == "torch" and facts["model"]["name"] == "test_vit" and facts["parity_gate_passed"] is None
    with pytest.raises(UsageError, match="--backend onnx"):
        load_served_model(run / "export", "torch", 1)
    assert [(plan_threads(n).model, plan_threads(n).decode) for n in (1, 2, 16)] == [(1, 1), (2, 1), (16, 4)]
