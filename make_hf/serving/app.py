"""The HTTP API of `make-hf serve`, a FastAPI app over a [`SearchService`].

```
GET  /search?q=red+sneakers&k=10        one query
POST /search  {"queries": [...], "k": 10}  several queries (limits.MAX_QUERIES at most)
GET  /products/{product_id}/image       the product's image file
GET  /health                            products, dimension, index kind, query encoder, limits
GET  /                                  a search page: result cards with the title/image weight of each product
```

A search answers `{"query", "results": [hit, ...]}` (GET) or `{"results": [{"query", "results"}, ...]}` (POST),
each hit `{"product_id", "title", "score", "title_weight", "image_weight", "image_url"}`. Every error is JSON,
`{"error": {"parameter": ..., "message": ...}}`, with a 4xx status: 422 for a bad parameter (FastAPI's own
validation errors included, rewritten to name the parameter), 404 for an unknown product or route, 403 for an
image the service refuses to serve.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, StrictInt
from starlette.exceptions import HTTPException

from .service import BadParameter, ImageUnavailable, SearchService, check_k, check_queries, check_query


class SearchRequest(BaseModel):
    """The body of `POST /search`."""

    queries: list[str]
    k: StrictInt = 10  # JSON `true` or "5" is a mistake, not k=1 or k=5


def _error(status: int, parameter: str | None, message: str) -> JSONResponse:
    return JSONResponse({"error": {"parameter": parameter, "message": message}}, status_code=status)


def _parameter_name(location: tuple) -> str:
    """`("query", "k")` -> `k`; `("body", "queries", 3)` -> `queries[3]`; `("body",)` -> `body`."""
    parts = list(location[1:]) if len(location) > 1 and location[0] in ("query", "path", "body") else list(location)
    if not parts:
        return str(location[0]) if location else "request"
    name = str(parts[0])
    for part in parts[1:]:
        name += f"[{part}]" if isinstance(part, int) else f".{part}"
    return name


def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    first = error.errors()[0]
    parameter = _parameter_name(tuple(first.get("loc", ())))
    if first.get("type") == "json_invalid":
        parameter, message = "body", "The request body is not valid JSON; send {\"queries\": [...], \"k\": 10}."
    elif first.get("type") == "missing":
        message = f"`{parameter}` is required."
    else:
        message = f"`{parameter}`: {first.get('msg', 'invalid value')} (got {first.get('input')!r})."
    return _error(422, parameter, message)


def create_app(service: SearchService) -> FastAPI:
    """The FastAPI app answering search, image, health and page requests from `service`."""
    # No /docs or /redoc: they load their scripts from a CDN, which a shop's search machines often cannot reach. The
    # schema stays at /openapi.json.
    app = FastAPI(title="MAKE product search", description="Text-to-product retrieval with MAKE.", docs_url=None,
                  redoc_url=None)
    page = resources.files(__package__).joinpath("static", "index.html").read_text(encoding="utf-8")

    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.exception_handler(BadParameter)
    def bad_parameter(request: Request, error: BadParameter) -> JSONResponse:
        return _error(422, error.parameter, error.message)

    @app.exception_handler(ImageUnavailable)
    def image_unavailable(request: Request, error: ImageUnavailable) -> JSONResponse:
        return _error(error.status, "product_id", error.message)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, None, f"{error.detail}: {request.method} {request.url.path}")

    @app.exception_handler(Exception)
    def server_error(request: Request, error: Exception) -> JSONResponse:
        return _error(500, None, f"The search service failed: {type(error).__name__}: {error}")

    @app.get("/search")
    def search_one(q: str, k: int = 10) -> dict[str, Any]:
        query = check_query(q, "q")
        return {"query": query, "results": service.search([query], check_k(k))[0]}

    @app.post("/search")
    def search_many(body: SearchRequest) -> dict[str, Any]:
        queries = check_queries(body.queries, "queries")
        k = check_k(body.k)
        return {"results": [{"query": query, "results": hits}
                            for query, hits in zip(queries, service.search(queries, k))]}

    @app.get("/products/{product_id:path}/image")
    def product_image(product_id: str) -> FileResponse:
        path, media_type = service.image_file(product_id)
        return FileResponse(path, media_type=media_type)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/", response_class=HTMLResponse)
    def search_page() -> HTMLResponse:
        return HTMLResponse(page)

    app.state.service = service
    return app


__all__ = ["SearchRequest", "create_app"]
