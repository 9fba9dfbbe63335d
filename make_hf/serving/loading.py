"""Build the `SearchService` that `make-hf serve` answers from: a saved retriever folder, or a model and a catalogue
file indexed at start-up, with the retriever's query tower or an exported ONNX one."""

from __future__ import annotations

import os

from .service import SearchService


def load_service(
    retriever: str | None = None,
    *,
    model: str | None = None,
    catalogue: str | None = None,
    kind: str = "flat",
    onnx: str | None = None,
    images: str | None = None,
    device: str | None = None,
    threads: int | None = None,
) -> SearchService:
    """A `SearchService` over a retriever.

    Args:
        retriever: a folder written by `MakeRetriever.save` (model, processor, index and catalogue).
        model, catalogue: instead of `retriever`, a model folder (or Hub id) and a products file (JSONL, JSON, CSV,
            TSV or Parquet with `product_id`, `title`, `image` paths relative to it), encoded and indexed (`kind`)
            at start-up. Product images are then served from the catalogue file's folder.
        onnx: a folder written by `make-hf export`: queries are encoded by its ONNX query tower
            (`make_hf.export.OnnxQueryEncoder`), whose dimension must be the index's.
        images: the folder product images are served from (default: see `SearchService`).
        device: torch device of the retriever's model.
        threads: CPU threads of the query encoder (`torch.set_num_threads`, or ONNX Runtime's intra-op threads);
            default: the library's own (torch: `OMP_NUM_THREADS` or every core; ONNX Runtime: every core).
    """
    from ..retrieval import MakeRetriever

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"--threads must be an integer >= 1, got {threads!r}.")
    if (retriever is None) == (model is None or catalogue is None):
        raise ValueError("Give --retriever (a saved MakeRetriever folder), or both --model and --catalogue.")
    if retriever is not None:
        loaded = MakeRetriever.load(retriever, device=device)
        if loaded.index is None:
            raise ValueError(
                f"--retriever {retriever!r} holds a model but no index: build one with "
                "`MakeRetriever.build_index(products)` and `save` it, or pass --model and --catalogue."
            )
    else:
        from ..evaluation import read_rows

        rows = read_rows(catalogue)
        loaded = MakeRetriever.from_pretrained(model, device=device)
        loaded.build_index(rows, kind=kind, metadata={"model": model, "catalogue": os.path.abspath(catalogue)})
        if images is None:
            images = os.path.dirname(os.path.abspath(catalogue))
    encoder, name = None, "torch"
    if onnx is not None:
        if not os.path.isdir(onnx):
            raise FileNotFoundError(f"--onnx {onnx!r}: no such folder; write one with `make-hf export`.")
        from ..export import OnnxQueryEncoder

        encoder, name = OnnxQueryEncoder(onnx, threads=threads).encode, f"onnx ({os.path.abspath(onnx)})"
    elif threads is not None:
        import torch

        torch.set_num_threads(threads)
    return SearchService(loaded, query_encoder=encoder, image_folder=images, query_encoder_name=name)


__all__ = ["load_service"]
