"""The HTTP side of ``deepfake serve``, in front of LitServe's ``/predict`` route: upload limits, content types, and
the page at ``GET /``.

LitServe hands a route's JSON body to the inference worker (``LitAPI.decode_request``). Uploads arrive as raw image
bytes or as a multipart form, so :class:`UploadGate` (an ASGI middleware, LitServer's ``middlewares`` argument)
reads them in the API process, refuses what is too large or not an image content type with a 4xx JSON error before
anything is queued, and passes the worker one JSON payload:
``{"image": base64, "filename": ..., "explain": bool, "map": bool, "stability": int}``.
Image decoding (not an image, truncated, decompression bomb) is checked in the worker, per request, by
``serving/worker.py``.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from urllib.parse import parse_qs, unquote

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Raw uploads: any image type, or bytes of unknown type (fetch() of a File without a type, or curl --data-binary
# without -H, which says application/x-www-form-urlencoded); the worker then decides whether they are an image.
RAW_TYPES = ("image/", "application/octet-stream", "application/x-www-form-urlencoded")
TRUTHY = ("1", "true", "yes", "on")
MAX_STABILITY = 32  # re-shared copies one request may ask for (?stability=K): each costs about one more prediction


def error(status: int, code: str, detail: str) -> JSONResponse:
    """Every 4xx answer of the server: ``{"error": code, "detail": message}``."""
    return JSONResponse({"error": code, "detail": detail}, status_code=status)


class UploadTooLarge(Exception):
    pass


class UploadGate:
    """ASGI middleware: ``GET /`` serves the page; ``POST api_path`` is read (at most ``max_bytes``), checked and
    rewritten into the JSON payload LitServe forwards to the worker; everything else passes through."""

    def __init__(self, app: ASGIApp, api_path: str = "/predict", max_bytes: int = 20 * 2**20):
        self.app = app
        self.api_path = api_path
        self.max_bytes = max_bytes
        self.page = resources.files("deepfake_lightning.serving").joinpath("page.html").read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/" and scope["method"] in ("GET", "HEAD"):
            await HTMLResponse(self.page)(scope, receive, send)
            return
        if scope["type"] != "http" or scope["path"] != self.api_path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        try:
            payload = await self._read(scope, receive)
        except UploadTooLarge as e:
            upload = f"upload of {e}" if str(e) else "upload"  # a streamed one is stopped at the limit, size unknown
            response = error(
                413,
                "too_large",
                f"{upload} is over the server's limit of {self.max_bytes / 2**20:g} "
                "MB (deepfake serve --max_upload_mb)",
            )
            await response(scope, receive, send)
            return
        if isinstance(payload, JSONResponse):
            await payload(scope, receive, send)
            return
        body = json.dumps(payload).encode()
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # e.g. http.disconnect
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app({**scope, "headers": headers}, replay, send)

    async def _read(self, scope: Scope, receive: Receive) -> dict | JSONResponse:
        request = Request(scope, receive)
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            raise UploadTooLarge(f"{int(declared) / 2**20:.1f} MB")
        query = parse_qs(scope.get("query_string", b"").decode())
        explain = query.get("explain", ["false"])[-1].lower() in TRUTHY
        score_map = query.get("map", ["false"])[-1].lower() in TRUTHY
        stability = query.get("stability", ["0"])[-1]
        if not stability.isdigit() or not 0 <= int(stability) <= MAX_STABILITY:
            return error(
                400,
                "bad_stability",
                f"stability={stability!r}: the number of re-shared copies to score, a whole number from 1 to "
                f"{MAX_STABILITY} (0 or absent: off)",
            )
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()

        async def limited() -> Message:  # also without (or with a false) Content-Length
            message = await receive()
            limited.total += len(message.get("body", b""))
            if limited.total > self.max_bytes:
                raise UploadTooLarge()
            return message

        limited.total = 0
        request = Request(scope, limited)
        if content_type == "multipart/form-data":
            try:
                form = await request.form(max_files=1, max_fields=10)
            except (MultiPartException, HTTPException) as e:  # Starlette >= 0.4x raises the latter for the former
                message = getattr(e, "message", None) or getattr(e, "detail", None) or str(e)
                return error(400, "bad_multipart", f"the multipart form cannot be read: {message}")
            uploads = [v for v in form.values() if hasattr(v, "read")]
            if not uploads:
                return error(
                    400,
                    "no_file",
                    "the multipart form has no file: send the image as a file field (curl -F file=@image.jpg)",
                )
            upload = uploads[0]
            data, filename = await upload.read(), upload.filename or "upload"
            explain = explain or str(form.get("explain", "")).lower() in TRUTHY
            score_map = score_map or str(form.get("map", "")).lower() in TRUTHY
            await form.close()
        elif content_type.startswith(RAW_TYPES) or not content_type:
            data, filename = await request.body(), unquote(request.headers.get("x-filename", "upload"))
        else:
            return error(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type!r} is not an image upload: send "
                "the image's bytes (Content-Type image/jpeg, image/png, ... or application/octet-stream) or "
                "a multipart/form-data file field",
            )
        if not data:
            return error(400, "empty_upload", "the upload is empty: send an image's bytes")
        image = base64.b64encode(data).decode("ascii")
        return {"image": image, "filename": filename, "explain": explain, "map": score_map, "stability": int(stability)}
