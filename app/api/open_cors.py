"""CORS open on clip back's read routes, as clip back itself has it: clip-front is a page
on another origin that calls them from the browser, and cannot send a key. The ``/v1``
API keeps ``XMODAL_CORS_ORIGINS`` (none by default)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CLIP_BACK_PATHS = frozenset({"/indices-list", "/knn-service", "/metadata"})
_ALLOW = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
    (b"access-control-allow-headers", b"Content-Type"),
    (b"access-control-max-age", b"600"),
]


class OpenCors:
    def __init__(self, app: ASGIApp, paths: frozenset[str] = CLIP_BACK_PATHS) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS":  # a preflight: answered here
            await send({"type": "http.response.start", "status": 204, "headers": _ALLOW})
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if not k.lower().startswith(b"access-control-")
                ]
                message = {**message, "headers": kept + _ALLOW[:1]}
            await send(message)

        await self.app(scope, receive, with_cors)
