"""`make-hf serve`: MAKE product search over HTTP (FastAPI + uvicorn; `pip install make-hf[serve]`).

- `make_hf.serving.service.SearchService`: checks a request, encodes its queries (under a lock), searches the
  index, describes each hit (no HTTP in it);
- `make_hf.serving.app.create_app(service)`: the FastAPI app (`/search`, `/products/{id}/image`, `/health`, `/`);
- `make_hf.serving.loading.load_service(...)`: a service from a saved retriever folder, or a model and catalogue;
- `make_hf.serving.client.search_service(url, queries, k)`: the standard-library client `make-hf search --url`
  uses;
- `make_hf.serving.limits`: what one request may ask for.

```python
>>> import uvicorn
>>> from make_hf.serving.app import create_app
>>> from make_hf.serving.loading import load_service
>>> uvicorn.run(create_app(load_service("shop-retriever")), host="127.0.0.1", port=8000)
```

This package imports nothing heavy itself, so the client stays usable without FastAPI or torch.
"""
