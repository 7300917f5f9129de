"""The app's routes with their full path templates, whichever way FastAPI keeps them."""

from __future__ import annotations

import fastapi.routing
from fastapi import FastAPI
from starlette.routing import BaseRoute, compile_path


def routes(app: FastAPI) -> list[tuple[str, BaseRoute]]:
    """Every route with its full path template, those of included routers too (recent
    FastAPI keeps included routers as such in ``app.routes``)."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    if iterate is None:
        return [(getattr(r, "path_format", ""), r) for r in app.routes]
    return [(ctx.path_format or "", ctx.original_route) for ctx in iterate(app.routes)]


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route answers for the concrete ``path`` (what a 405's ``Allow``
    names: Starlette names only those of the first route matching the path)."""
    methods: set[str] = set()
    for template, route in routes(app):
        if template and compile_path(template)[0].match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
