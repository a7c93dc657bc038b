"""`sustain serve`: a trained model behind an HTTP API and a phone-friendly page (docs/deploy.md).

    sustain serve checkpoints/demo/export --port 8000

FastAPI on uvicorn. Requests put their decoded images on one asyncio queue; a single
batching task takes up to ``max_batch`` images, waiting at most ``max_wait_ms`` for more
after the first, and runs one forward pass for them on one model thread (the model's
intra-op threads use the cores; `serve_model.plan_threads`). Uploads are read into memory
and checked before decoding (`serve_input`); a bad one is a JSON 4xx and touches nothing else.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from ..errors import UsageError
from .serve_input import MB, BadUpload, Limits, decode, read_uploads
from .serve_model import ServedModel, available_cores, load_served_model, model_facts, plan_threads

log = logging.getLogger("sustain.deploy.serve")

OPEN_PATHS = frozenset({"/health", "/"})  # the page holds no data; it sends the token the user types


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch: int = 16
    max_wait_ms: float = 5.0
    topk: int = 3
    token: str | None = None
    limits: Limits = field(default_factory=Limits)


# --------------------------------------------------------------------------- the batching queue


class Batcher:
    """Concurrent requests' images, scored together: up to ``max_batch`` per forward pass, the
    first image waiting at most ``max_wait_ms`` for company."""

    def __init__(self, predict: Callable[[list[Image.Image]], list[dict[str, Any]]], max_batch: int,
                 max_wait_ms: float) -> None:
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000.0
        self.queue: asyncio.Queue[tuple[Image.Image, asyncio.Future]] = asyncio.Queue()
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="sustain-model")
        self.batches = 0
        self.images = 0

    async def submit(self, images: Sequence[Image.Image]) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        for image, future in zip(images, futures, strict=True):
            self.queue.put_nowait((image, future))
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list[tuple[Image.Image, asyncio.Future]]:
        batch = [await self.queue.get()]
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while len(batch) < self.max_batch:
            if not self.queue.empty():
                batch.append(self.queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), left))
            except TimeoutError:
                break
        return [(image, future) for image, future in batch if not future.done()]  # a client that left

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self.model_thread, self.predict, [im for im, _ in batch])
            except Exception as exc:  # a model failure answers this batch's requests with a 500, not a hang
                log.exception("❌ Forward pass failed")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(batch)
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)


def predict_fn(served: ServedModel, topk: int) -> Callable[[list[Image.Image]], list[dict[str, Any]]]:
    """One forward pass over a batch; each image's result as `Predictor` gives it (top-k, bin, and
    whatever it adds, such as the accept-or-review decision), without the file-oriented keys."""
    def predict(images: list[Image.Image]) -> list[dict[str, Any]]:
        predictions = served.predictor.predict(images, topk=topk, batch_size=len(images))
        return [{k: v for k, v in p.to_dict().items() if k not in ("input", "error")} for p in predictions]

    return predict


# --------------------------------------------------------------------------- the app


def authorised(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


class BearerToken:
    """Pure ASGI middleware (Starlette's ``@app.middleware`` wraps every request in extra tasks and
    streams, a measurable cost per request): all paths but `OPEN_PATHS` need the bearer token."""

    def __init__(self, app: Any, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
            header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not authorised(header, self.token):
                response = error(401, "unauthorised", "this server needs the header 'Authorization: Bearer TOKEN' "
                                 "(the token in the server's --token-file)", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


PREDICT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                 "description": "one or several images (the field is repeatable)"}}}},
    "image/*": {"schema": {"type": "string", "format": "binary"}, "description": "one image as the raw body"}}}}


def build_app(served: ServedModel, options: ServeOptions, decode_threads: int = 2):
    """The FastAPI app: ``POST /predict``, ``GET /health``, ``GET /model``, the page at ``/``."""
    from .serve_page import page_html

    batcher = Batcher(predict_fn(served, options.topk), options.max_batch, options.max_wait_ms)
    decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="sustain-decode")
    ident, facts, state = served.model_id, model_facts(served), {"ready": False}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        task = asyncio.create_task(batcher.run())
        size = int(facts["input_size"][-1]) if facts["input_size"] else 224
        await batcher.submit([Image.new("RGB", (size, size))])  # warm-up: the first real request is not slow
        state["ready"] = True
        log.info("✅ Serving %s (%s, backend %s, %s) at http://%s:%d/ (API docs at /docs)", ident["name"],
                 f"export {ident['export_hash']}", served.backend, facts["precision"],
                 _url_host(options.host), options.port)
        yield
        task.cancel()
        batcher.model_thread.shutdown(wait=True)
        decoder.shutdown(wait=False)
        log.info("Stopped: %d images scored in %d forward passes", batcher.images, batcher.batches)

    app = FastAPI(title="Sustain waste classifier", version="1", lifespan=lifespan,
                  description="Classify photos of waste into classes and disposal bins (docs/deploy.md).")

    if options.token:
        app.add_middleware(BearerToken, token=options.token)

    @app.exception_handler(BadUpload)
    async def bad_upload(_request: Request, exc: BadUpload):
        log.info("  refused upload: %d %s: %s", exc.status, exc.code, exc.message)
        return error(exc.status, exc.code, exc.message)

    @app.post("/predict", openapi_extra=PREDICT_BODY, summary="Classify one or several images")
    async def predict(request: Request) -> dict[str, Any]:
        uploads = await read_uploads(request.stream(), request.headers.get("content-type", ""),
                                     request.headers.get("content-length"), options.limits)
        loop = asyncio.get_running_loop()
        images = [await loop.run_in_executor(decoder, decode, u, options.limits) for u in uploads]
        started = time.perf_counter()
        results = await batcher.submit(images)
        return {"model": ident, "predictions": [{"file": u.name, **r} for u, r in zip(uploads, results, strict=True)],
                "seconds": round(time.perf_counter() - started, 4)}

    @app.get("/health", summary="Liveness and readiness")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "ready": state["ready"], "model": ident,
                "forward_passes": batcher.batches, "images_scored": batcher.images}

    @app.get("/model", summary="The model card's facts")
    async def model() -> dict[str, Any]:
        return facts

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return page_html(ident["name"], bool(options.token))

    return app


# --------------------------------------------------------------------------- sustain serve


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def read_token(path: str | Path | None, host: str) -> str | None:
    """The bearer token, required for any address other than loopback (exit 2 without it)."""
    if path is None:
        if not is_loopback(host):
            raise UsageError(f"Refusing to bind {host} without --token-file: anyone who can reach this "
                             "address could use the model", "pass --token-file FILE (a secret on its first "
                             "line), or bind 127.0.0.1 behind a reverse proxy")
        return None
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise UsageError(f"Cannot read --token-file {path}: {exc.strerror or exc}") from None
    if len(token) < 16:
        raise UsageError(f"The token in {path} is {len(token)} characters long; use at least 16",
                         "e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE")
    return token


def serve(path: str | Path, backend: str = "onnx", options: ServeOptions | None = None,
          token_file: str | Path | None = None) -> int:
    """Load the model, serve until SIGTERM or Ctrl-C, drain the requests in flight, return 0."""
    import uvicorn

    options = options or ServeOptions()
    if options.max_batch < 1 or options.max_wait_ms < 0 or options.limits.max_images < 1:
        raise UsageError("--max-batch and --max-images must be at least 1, --max-wait-ms at least 0")
    options = ServeOptions(**{**options.__dict__, "token": read_token(token_file, options.host)})
    plan = plan_threads(available_cores())
    served = load_served_model(path, backend, plan.model)
    log.info("  threads: %d for the model, %d for decoding", plan.model, plan.decode)
    app = build_app(served, options, plan.decode)
    config = uvicorn.Config(app, host=options.host, port=options.port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=30, limit_concurrency=1024, server_header=False)
    # uvicorn re-raises the stop signal after a graceful shutdown; SIGTERM then reaches this no-op
    # handler instead of killing the process, so a drained stop exits 0 as a service manager expects.
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        uvicorn.Server(config).run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def serve_cli(model: str | Path, backend: str = "onnx", *, token_file: str | Path | None = None,
              max_images: int = 16, max_upload_mb: float = 20.0, max_pixels: int = 50_000_000,
              **options: Any) -> int:
    """`sustain serve`: the command line's options to `serve`."""
    limits = Limits(max_bytes=int(max_upload_mb * MB), max_images=max_images, max_pixels=max_pixels)
    return serve(model, backend, ServeOptions(**options, limits=limits), token_file)
