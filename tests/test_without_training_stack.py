"""The serving install (`pip install make-hf`, without the `train` extra): the model, processor, retriever, product
index and `make-hf search` import and work with accelerate, datasets, evaluate and matplotlib absent, and what needs
them says `pip install "make-hf[train]"` instead of `No module named ...`.

The four packages are hidden from a child process by a `sitecustomize` on its PYTHONPATH that wraps every import
finder, so that `import accelerate` fails and `importlib.util.find_spec("accelerate")` is None, as when they are not
installed."""

import os
import subprocess
import sys
import textwrap

from make_hf.training_stack import TRAINING_STACK

HIDE_PACKAGES = textwrap.dedent(
    """
    import sys

    HIDDEN = {hidden!r}


    class _Hiding:
        def __init__(self, finder):
            self._finder = finder

        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in HIDDEN:
                return None
            find_spec = getattr(self._finder, "find_spec", None)
            return find_spec(name, path, target) if find_spec is not None else None

        def find_distributions(self, *args, **kwargs):
            find = getattr(self._finder, "find_distributions", None)
            for distribution in find(*args, **kwargs) if find is not None else ():
                if (distribution.metadata["Name"] or "").lower() not in HIDDEN:
                    yield distribution

        def __getattr__(self, name):
            return getattr(self._finder, name)


    sys.meta_path[:] = [_Hiding(finder) for finder in sys.meta_path]
    """
)

SERVING = textwrap.dedent(
    """
    import contextlib, importlib.util, io, json, os, sys

    import torch

    HIDDEN = {hidden!r}
    for name in HIDDEN:  # the packages really are absent here
        assert importlib.util.find_spec(name) is None, name
        try:
            __import__(name)
        except ModuleNotFoundError:
            pass
        else:
            raise AssertionError(f"{{name}} imported")

    from make_hf import MakeConfig, MakeModel, MakeProcessor, MakeRetriever, train_tokenizer
    from make_hf.cli import main
    from make_hf.index import ProductIndex, save_embeddings

    work = sys.argv[1]
    titles = ["red running shoes", "usb c charger", "blue cotton shirt", "wooden desk lamp"]
    torch.manual_seed(0)
    config = MakeConfig.from_preset("make-tiny")
    tokenizer = train_tokenizer(titles, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(titles, titles)
    model = MakeModel(config).eval()
    model_dir = os.path.join(work, "model")
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)

    retriever = MakeRetriever.from_pretrained(model_dir, device="cpu")
    with torch.no_grad():
        expected = model.get_query_features(**processor(query=["red shoes"]))
    query = retriever.encode_queries(["red shoes"])
    assert query.shape == (1, config.projection_dim), query.shape
    assert torch.allclose(torch.as_tensor(query), expected, atol=1e-6)  # the reloaded model encodes the same

    retriever.build_index([{{"product_id": f"p{{i}}", "title": t}} for i, t in enumerate(titles)], kind="flat")
    hits = retriever.search(["red shoes"], k=2)[0]
    retriever.save(os.path.join(work, "retriever"))
    reloaded = MakeRetriever.load(os.path.join(work, "retriever"), device="cpu")
    assert [hit["product_id"] for hit in reloaded.search(["red shoes"], k=2)[0]] == [h["product_id"] for h in hits]

    encoded = retriever.encode_products([{{"product_id": f"p{{i}}", "title": t}} for i, t in enumerate(titles)])
    save_embeddings(os.path.join(work, "embeddings.safetensors"), torch.as_tensor(encoded.embeddings),
                    encoded.product_ids, metadata={{"model": model_dir}})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        statuses = [
            main(["search", "--retriever", os.path.join(work, "retriever"), "red shoes", "-k", "2"]),
            main(["index", "--embeddings", os.path.join(work, "embeddings.safetensors"),
                  "--output", os.path.join(work, "index"), "--kind", "flat"]),
            main(["search", "--index", os.path.join(work, "index"), "--model", model_dir, "red shoes", "-k", "2"]),
            main(["encode", "--model", model_dir, "--catalogue", os.path.join(work, "catalogue.jsonl"),
                  "--output", os.path.join(work, "encoded")]),
            main(["index", "--embeddings", os.path.join(work, "encoded"), "--output", os.path.join(work, "index2")]),
        ]
    assert statuses == [0, 0, 0, 0, 0], (statuses, out.getvalue())
    assert len(ProductIndex.load(os.path.join(work, "index"))) == 4

    loaded = sorted(name for name in HIDDEN if name in sys.modules)
    assert not loaded, loaded

    messages = {{}}
    for module in ("make_hf.training", "make_hf.data"):
        try:
            __import__(module)
        except ImportError as error:
            messages[module] = str(error)
    print(json.dumps(messages))
    """
)


def test_serving_works_without_the_training_stack_and_training_says_what_to_install(tmp_path):
    hidden = set(TRAINING_STACK)
    assert hidden == {"accelerate", "datasets", "evaluate", "matplotlib"}
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(HIDE_PACKAGES.format(hidden=hidden))
    (tmp_path / "serving.py").write_text(SERVING.format(hidden=hidden))
    (tmp_path / "catalogue.jsonl").write_text('{"product_id": "p0", "title": "red running shoes"}\n')
    python_path = os.pathsep.join(path for path in (str(site), os.environ.get("PYTHONPATH")) if path)
    env = {**os.environ, "PYTHONPATH": python_path, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(tmp_path / "serving.py"), str(tmp_path)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-6000:]
    import json

    messages = json.loads(result.stdout.strip().splitlines()[-1])
    install = 'pip install "make-hf[train]"'
    assert install in messages["make_hf.training"] and "accelerate" in messages["make_hf.training"]
    assert install in messages["make_hf.data"] and "datasets" in messages["make_hf.data"]
    assert "No module named" not in "".join(str(value) for value in messages.values())
