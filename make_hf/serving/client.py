"""Search a running `make-hf serve` from Python with the standard library only (what `make-hf search --url` uses)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from .limits import MAX_QUERIES


def _post(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as error:
        try:
            message = json.load(error)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = error.reason
        raise ValueError(f"{url} answered {error.code}: {message}") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(
            f"--url {url.rsplit('/search', 1)[0]!r}: no search service answered ({reason}); start one with "
            "`make-hf serve --retriever DIR`, or check the host and port."
        ) from None


def search_service(url: str, queries: list[str], k: int = 10, timeout: float = 60.0) -> list[dict[str, Any]]:
    """`POST /search` at `url` (e.g. `http://127.0.0.1:8000`), `MAX_QUERIES` queries a request.

    Returns one `{"query", "results": [hit, ...]}` per query, in order; a hit is `{"product_id", "title", "score",
    "title_weight", "image_weight", "image_url"}`. Raises `ValueError` with the service's message when it refuses
    the request, `ConnectionError` when nothing answers.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--url {url!r} must start with http:// or https://, e.g. http://127.0.0.1:8000.")
    endpoint = url.rstrip("/") + "/search"
    results = []
    for start in range(0, len(queries), MAX_QUERIES):
        answer = _post(endpoint, {"queries": queries[start:start + MAX_QUERIES], "k": k}, timeout)
        results.extend(answer["results"])
    return results


__all__ = ["search_service"]
