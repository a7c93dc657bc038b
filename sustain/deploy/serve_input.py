"""What `sustain serve` accepts as an upload, read in memory only and checked before any model sees it.

`POST /predict` takes one or several images as ``multipart/form-data`` (field ``file``,
repeatable) or one image as the raw body with an ``image/*`` content type. The body is read
as a stream and refused as soon as it passes the size limit; multipart parts are parsed by
python-multipart's streaming parser into memory (FastAPI's ``UploadFile`` would spool large
parts to a temporary file on disk). Each image is decoded by `sustain.data.scan.load_rgb`
(the decode ingestion uses), with the pixel limit checked on the header, before the pixels
are decoded, so a decompression bomb costs nothing.

Every refusal is a `BadUpload`: an HTTP status, a short code and a message that names the
image and says what to do.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from PIL import Image

from ..data import OVER_PIXEL_LIMIT, CorruptImage, load_rgb

MB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one request may carry."""

    max_bytes: int = 20 * MB  # the whole request body
    max_images: int = 16
    max_pixels: int = 50_000_000  # a 48-megapixel phone photo passes; a 10,000 x 10,000 bomb does not


class BadUpload(Exception):
    """A request refused with ``status``: JSON ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


@dataclass
class Upload:
    """One uploaded image, still encoded."""

    name: str
    data: bytes


def too_large(limits: Limits) -> BadUpload:
    return BadUpload(413, "too_large", f"the request is over the size limit of {limits.max_bytes // MB} MB "
                     "(--max-upload-mb); send a smaller photo or fewer images per request")


def too_many(limits: Limits) -> BadUpload:
    return BadUpload(413, "too_many_images", f"more than {limits.max_images} images in one request "
                     "(--max-images); split them over several requests")


async def read_body(stream: AsyncIterator[bytes], declared: str | None, limits: Limits) -> bytes:
    """The raw body, refused as soon as the declared length or the bytes read pass the limit."""
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large(limits)
    chunks, size = [], 0
    async for chunk in stream:
        size += len(chunk)
        if size > limits.max_bytes:
            raise too_large(limits)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class _Parts:
    """python-multipart callbacks collecting the ``file`` parts in memory."""

    limits: Limits
    uploads: list[Upload] = field(default_factory=list)
    header: list[bytes] = field(default_factory=lambda: [b"", b""])
    headers: dict[str, bytes] = field(default_factory=dict)
    data: list[bytes] = field(default_factory=list)

    def callbacks(self) -> dict:
        return {"on_part_begin": self.begin, "on_header_field": self.field_data, "on_header_value": self.value_data,
                "on_header_end": self.header_end, "on_part_data": self.part_data, "on_part_end": self.part_end}

    def begin(self) -> None:
        self.headers, self.data = {}, []

    def field_data(self, data: bytes, start: int, end: int) -> None:
        self.header[0] += data[start:end]

    def value_data(self, data: bytes, start: int, end: int) -> None:
        self.header[1] += data[start:end]

    def header_end(self) -> None:
        self.headers[self.header[0].decode("latin-1").lower()] = self.header[1]
        self.header = [b"", b""]

    def part_data(self, data: bytes, start: int, end: int) -> None:
        self.data.append(data[start:end])

    def part_end(self) -> None:
        from python_multipart.multipart import parse_options_header

        _, options = parse_options_header(self.headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name != "file":
            raise BadUpload(400, "unknown_field", f"unexpected form field {name!r}; send each image in a field "
                            "named 'file' (repeatable)")
        if len(self.uploads) >= self.limits.max_images:
            raise too_many(self.limits)
        filename = options.get(b"filename", b"").decode("utf-8", "replace") or f"image {len(self.uploads) + 1}"
        self.uploads.append(Upload(filename, b"".join(self.data)))


async def read_uploads(stream: AsyncIterator[bytes], content_type: str, declared: str | None,
                       limits: Limits) -> list[Upload]:
    """The images of one request, by its content type; a wrong one is a 415 that says what works."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, options = parse_options_header(content_type or "")
    kind = kind.decode("latin-1").lower()
    if kind.startswith("image/"):
        return [Upload("image 1", await read_body(stream, declared, limits))]
    if kind != "multipart/form-data" or not options.get(b"boundary"):
        raise BadUpload(415, "wrong_content_type", f"content type {kind or 'none'!r} is not accepted; send "
                        "multipart/form-data with field 'file', or one image as the body with an image/* type")
    if declared and declared.isdigit() and int(declared) > limits.max_bytes:
        raise too_large(limits)
    parts = _Parts(limits)
    parser = MultipartParser(options[b"boundary"], parts.callbacks())
    size = 0
    try:
        async for chunk in stream:
            size += len(chunk)
            if size > limits.max_bytes:
                raise too_large(limits)
            parser.write(chunk)
        parser.finalize()
    except BadUpload:
        raise
    except Exception as exc:  # python-multipart's MultipartParseError and friends
        raise BadUpload(400, "bad_multipart", f"the multipart body could not be parsed: {exc}") from None
    if not parts.uploads:
        raise BadUpload(400, "no_image", "no image in the request; send it in a form field named 'file'")
    return parts.uploads


def decode(upload: Upload, limits: Limits) -> Image.Image:
    """RGB pixels of one upload, or a `BadUpload` naming it: 400 for what is not a readable
    image (zero bytes, truncated, not an image), 413 for too many pixels."""
    try:
        return load_rgb(upload.data, max_pixels=limits.max_pixels)
    except CorruptImage as exc:
        reason = str(exc)
        if reason.startswith(OVER_PIXEL_LIMIT):
            detail = reason.split(":", 1)[1].split("(")[0].strip()
            raise BadUpload(413, "too_many_pixels", f"{upload.name}: {detail} (--max-pixels); a photo that "
                            "large is refused before decoding; send a smaller one") from None
        code = reason.split(":", 1)[0].replace(" ", "_")
        raise BadUpload(400, code, f"{upload.name}: {reason}; send a JPEG, PNG or WebP photo") from None
