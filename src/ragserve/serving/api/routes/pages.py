"""The chat page and the widget's files (not part of the API schema)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, Response

from ragserve.errors import DocumentNotFoundError

__all__ = ["STATIC_DIR", "router"]

STATIC_DIR = Path(__file__).resolve().parents[3] / "widget"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def index_page() -> Response:
    page = STATIC_DIR / "index.html"
    if page.exists():
        return FileResponse(page, media_type="text/html")
    return HTMLResponse("<h1>ragserve</h1><p>See <a href='/docs'>/docs</a>.</p>")


@router.get("/widget.js")
async def widget_js() -> Response:
    return FileResponse(STATIC_DIR / "widget.js", media_type="text/javascript")


@router.get("/widget.css")
async def widget_css() -> Response:
    return FileResponse(STATIC_DIR / "widget.css", media_type="text/css")


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    path = (STATIC_DIR / name).resolve()
    if path.parent != STATIC_DIR.resolve() or not path.is_file():
        raise DocumentNotFoundError(f"No static file '{name}'.")
    return FileResponse(path)
