"""ProductIndex.load on folders whose files are damaged or crafted: a clear ValueError naming the file, never a
raw FAISS RuntimeError, KeyError, TypeError or RecursionError, and never a silently wrong index.

Each case rewrites one file and then, so the size/SHA-256 manifest cannot catch it first, records the new files in
the manifest as a crafted folder would."""

import json
import os
import shutil

import numpy as np
import pytest

from make_hf.index import ProductIndex, _sha256

REBUILD = "Rebuild the index with `make-hf index`"


@pytest.fixture(scope="module")
def saved_index(tmp_path_factory):
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    vectors = np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32)
    folder = tmp_path_factory.mktemp("index") / "hnsw"
    ProductIndex.build(vectors, [f"sku-{i}" for i in range(10)], kind="hnsw", hnsw_m=8).save(folder)
    yield folder
    faiss.omp_set_num_threads(threads)


def _crafted(saved_index, tmp_path, ids_text=None, index_bytes=None, config_edit=None):
    folder = tmp_path / "crafted"
    shutil.copytree(saved_index, folder)
    if ids_text is not None:
        (folder / "product_ids.json").write_text(ids_text)
    if index_bytes is not None:
        (folder / "index.faiss").write_bytes(index_bytes((folder / "index.faiss").read_bytes()))
    config = json.loads((folder / "index_config.json").read_text())
    for name in ("index.faiss", "product_ids.json"):
        config["files"][name] = {"bytes": os.path.getsize(folder / name), "sha256": _sha256(folder / name)}
    if config_edit is not None:
        config = config_edit(config)
    (folder / "index_config.json").write_text(json.dumps(config))
    return folder


def _without(key):
    return lambda config: {name: value for name, value in config.items() if name != key}


def _with(**changes):
    return lambda config: {**config, **changes}


IDS = [f"sku-{i}" for i in range(10)]

CASES = {
    "ids_dict": ({"ids_text": json.dumps({pid: i for i, pid in enumerate(IDS)})},
                 "product_ids.json holds a JSON dict, not a list of ids"),
    "ids_deeply_nested": ({"ids_text": "[" * 100_000 + "]" * 100_000}, "product_ids.json is nested too deeply"),
    "ids_wrong_length": ({"ids_text": json.dumps(IDS[:9])}, "holds 10 vectors, product_ids.json 9 ids"),
    "ids_duplicated": ({"ids_text": json.dumps(IDS[:9] + ["sku-0"])}, r"`product_ids\[9\]` = 'sku-0' is already"),
    "ids_not_strings": ({"ids_text": json.dumps(IDS[:9] + [[1]])}, r"`product_ids\[9\]` is \[1\]"),
    "unknown_kind": ({"config_edit": _with(kind="lsh")}, r"index_config.json is not a valid .*`kind` is 'lsh'"),
    "other_kind": ({"config_edit": _with(kind="flat")}, "index.faiss holds a FAISS IndexHNSWFlat, but .*'flat'"),
    "no_kind": ({"config_edit": _without("kind")}, "index_config.json is not a valid index config .*`kind` is"),
    "no_count": ({"config_edit": _without("num_products")}, "`num_products` is missing"),
    "wrong_dim": ({"config_edit": _with(dim=3)}, "index.faiss holds 8-dimensional vectors, but index_config.json"),
    "params_list": ({"config_edit": _with(params=[1])}, "`params` is a JSON list, not an object"),
    "params_text": ({"config_edit": _with(params={"ef_search": "64"})}, "`params.ef_search` is '64'"),
    "metadata_list": ({"config_edit": _with(metadata=[1])}, "`metadata` is a JSON list"),
    "config_list": ({"config_edit": lambda config: [config]}, "index_config.json holds a JSON list, not an object"),
    "version_bool": ({"config_edit": _with(format_version=True)}, "has format_version True"),
    "truncated_index": ({"index_bytes": lambda data: data[: len(data) // 2]},
                        "index.faiss is not a readable FAISS index"),
    "garbage_index": ({"index_bytes": lambda data: bytes(range(256)) * (len(data) // 256)},
                      "index.faiss is not a readable FAISS index"),
    "empty_index": ({"index_bytes": lambda data: b""}, "index.faiss is not a readable FAISS index"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crafted_file_gives_a_clear_error(saved_index, tmp_path, case):
    changes, message = CASES[case]
    folder = _crafted(saved_index, tmp_path, **changes)
    with pytest.raises(ValueError, match=message) as error:
        ProductIndex.load(folder)
    assert str(folder) in str(error.value) and "Rebuild the index" in str(error.value)
    if case not in ("ids_wrong_length", "version_bool"):
        assert REBUILD in str(error.value)


def test_a_manifest_that_does_not_match_is_refused(saved_index, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(saved_index, folder)
    (folder / "product_ids.json").write_text(json.dumps(IDS[::-1]))  # same size, other order: only SHA-256 differs
    with pytest.raises(ValueError, match="product_ids.json is not the file index_config.json was saved with"):
        ProductIndex.load(folder)


def test_the_saved_folder_itself_loads(saved_index):
    assert ProductIndex.load(saved_index).product_ids == IDS
