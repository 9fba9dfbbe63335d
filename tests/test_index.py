"""ProductIndex: builds, searches, and survives a save/load round trip for every kind."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from make_hf.index import INDEX_KINDS, ProductIndex, load_embeddings, save_embeddings

NUM_PRODUCTS, DIM = 800, 16


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    # FAISS's OpenMP threads spin while waiting; on a busy 2-core machine a tiny k-means then takes seconds
    # instead of milliseconds. One thread keeps these small tests fast; results do not depend on it.
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def catalogue():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, DIM))
    vectors = centres[rng.integers(0, 20, NUM_PRODUCTS)] + 0.3 * rng.normal(size=(NUM_PRODUCTS, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    queries = vectors[:40] + 0.05 * rng.normal(size=(40, DIM)).astype(np.float32)
    ids = [f"sku-{i:04d}" for i in range(NUM_PRODUCTS)]
    return vectors, queries.astype(np.float32), ids


BUILD_ARGS = {
    "flat": {},
    "hnsw": {"hnsw_m": 16, "ef_construction": 64, "ef_search": 64},
    "ivfpq": {"nlist": 8, "nprobe": 8, "pq_m": 16, "pq_bits": 6},
}


@pytest.mark.parametrize("kind", INDEX_KINDS)
def test_round_trip_gives_the_same_results(tmp_path, catalogue, kind):
    vectors, queries, ids = catalogue
    metadata = {"model": "tiny", "condition": "title+image"}
    index = ProductIndex.build(vectors, ids, kind=kind, metadata=metadata, **BUILD_ARGS[kind])
    found, scores = index.search(queries, k=10)
    assert len(found) == len(queries) and all(len(row) == 10 for row in found)
    assert scores.shape == (len(queries), 10) and scores.dtype == np.float32
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first

    index.save(tmp_path / "index")
    assert sorted(os.listdir(tmp_path / "index")) == ["index.faiss", "index_config.json", "product_ids.json"]
    assert os.listdir(tmp_path) == ["index"]
    loaded = ProductIndex.load(tmp_path / "index")
    assert loaded.kind == kind and len(loaded) == NUM_PRODUCTS and loaded.dim == DIM
    assert loaded.params == index.params
    assert loaded.metadata == metadata
    found_again, scores_again = loaded.search(queries, k=10)
    assert found_again == found
    np.testing.assert_array_equal(scores_again, scores)


def test_flat_is_exact_search(catalogue):
    vectors, queries, ids = catalogue
    found, scores = ProductIndex.build(vectors, ids).search(torch.from_numpy(queries), k=5)
    exact = torch.from_numpy(queries) @ torch.from_numpy(vectors).T
    top = exact.topk(5, dim=1)
    np.testing.assert_allclose(scores, top.values.numpy(), rtol=1e-5, atol=1e-6)
    assert found == [[ids[i] for i in row] for row in top.indices.tolist()]


@pytest.mark.parametrize("kind, floor", [("hnsw", 0.95), ("ivfpq", 0.8)])
def test_approximate_kinds_find_the_exact_neighbours(catalogue, kind, floor):
    vectors, queries, ids = catalogue
    exact, _ = ProductIndex.build(vectors, ids).search(queries, k=10)
    approx, _ = ProductIndex.build(vectors, ids, kind=kind, **BUILD_ARGS[kind]).search(queries, k=10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= floor


def test_ivfpq_defaults_fit_the_catalogue(catalogue):
    vectors, _, ids = catalogue
    index = ProductIndex.build(vectors, ids, kind="ivfpq")
    assert index.params["nlist"] == NUM_PRODUCTS // 39  # k-means wants ~39 points per list
    assert index.params["pq_m"] == 4 and DIM % index.params["pq_m"] == 0
    assert 2 ** index.params["pq_bits"] <= NUM_PRODUCTS


def test_ivfpq_build_is_reproducible(catalogue):
    vectors, queries, ids = catalogue
    first = ProductIndex.build(vectors, ids, kind="ivfpq", nlist=8, max_train_vectors=500, seed=3)
    second = ProductIndex.build(vectors, ids, kind="ivfpq", nlist=8, max_train_vectors=500, seed=3)
    np.testing.assert_array_equal(first.search(queries, 5)[1], second.search(queries, 5)[1])


def test_search_parameters_persist_and_single_query(tmp_path, catalogue):
    vectors, queries, ids = catalogue
    index = ProductIndex.build(vectors, ids, kind="hnsw", **BUILD_ARGS["hnsw"])
    found, scores = index.search(queries[0], k=3, ef_search=16)  # a single (dim,) vector
    assert len(found) == 1 and scores.shape == (1, 3)
    assert index.params["ef_search"] == 16 and index.faiss_index.hnsw.efSearch == 16
    assert ProductIndex.load(index.save(tmp_path / "hnsw")).faiss_index.hnsw.efSearch == 16
    with pytest.raises(ValueError, match="`nprobe` applies to kind='ivfpq' only"):
        index.search(queries, nprobe=4)
    ivfpq = ProductIndex.build(vectors, ids, kind="ivfpq", **BUILD_ARGS["ivfpq"])
    ivfpq.set_search_params(nprobe=3)
    assert ProductIndex.load(ivfpq.save(tmp_path / "ivfpq")).faiss_index.nprobe == 3
    with pytest.raises(ValueError, match="between 1 and nlist=8, got 9"):
        ivfpq.set_search_params(nprobe=9)


def test_k_larger_than_catalogue_and_missing_results(catalogue):
    vectors, queries, ids = catalogue
    small = ProductIndex.build(vectors[:3], ids[:3])
    found, scores = small.search(queries[:2], k=10)
    assert [len(row) for row in found] == [3, 3]
    # One probe of many lists on a tiny catalogue finds fewer than k products: padded with None / -inf.
    sparse = ProductIndex.build(vectors[:200], ids[:200], kind="ivfpq", nlist=5, nprobe=1, pq_bits=4)
    found, scores = sparse.search(queries[:5], k=200)
    padded = [(pid is None) == np.isneginf(score) for row, srow in zip(found, scores) for pid, score in zip(row, srow)]
    assert all(padded) and any(pid is None for row in found for pid in row)


def test_add_appends_products(tmp_path, catalogue):
    vectors, queries, ids = catalogue
    index = ProductIndex.build(vectors[:500], ids[:500])
    index.add(vectors[500:], ids[500:])
    assert len(index) == NUM_PRODUCTS
    assert index.search(vectors[700], k=1)[0] == [[ids[700]]]
    with pytest.raises(ValueError, match=r"product_ids\[0\]` = 'sku-0000' is already in the index \(row 0\)"):
        index.add(vectors[:1], ids[:1])


def test_save_overwrites_and_leaves_no_temporary_files(tmp_path, catalogue):
    vectors, _, ids = catalogue
    folder = tmp_path / "index"
    ProductIndex.build(vectors, ids).save(folder)
    (folder / "catalogue.jsonl").write_text("{}\n")  # not the index's: kept by a save
    os.chmod(folder, 0o750)
    ProductIndex.build(vectors[:10], ids[:10], kind="hnsw").save(folder)
    assert sorted(os.listdir(folder)) == ["catalogue.jsonl", "index.faiss", "index_config.json", "product_ids.json"]
    assert os.listdir(tmp_path) == ["index"]
    assert os.stat(folder).st_mode & 0o777 == 0o750
    loaded = ProductIndex.load(folder)
    assert loaded.kind == "hnsw" and len(loaded) == 10


def test_load_errors(tmp_path, catalogue):
    vectors, _, ids = catalogue
    with pytest.raises(FileNotFoundError, match="missing index.faiss, product_ids.json, index_config.json"):
        ProductIndex.load(tmp_path)
    folder = ProductIndex.build(vectors[:10], ids[:10]).save(tmp_path / "index")
    config = json.loads((tmp_path / "index" / "index_config.json").read_text())
    with open(os.path.join(folder, "product_ids.json"), "w") as f:
        json.dump(ids[:9], f)
    with pytest.raises(ValueError, match=r"product_ids.json is not the file index_config.json was saved with \(\d+ "):
        ProductIndex.load(folder)
    # A version-1 folder (no manifest) still loads; its counts are checked.
    config["format_version"] = 1
    del config["files"]
    (tmp_path / "index" / "index_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="holds 10 vectors, product_ids.json 9 ids"):
        ProductIndex.load(folder)
    (tmp_path / "index" / "index_config.json").write_text('{"format_version": 2, "ki')
    with pytest.raises(ValueError, match="index_config.json is not valid JSON .* is damaged"):
        ProductIndex.load(folder)


def _old_and_new(catalogue):
    """Two flat indexes of the same size (so their files have the same sizes) with other vectors and other ids."""
    vectors, queries, ids = catalogue
    old = ProductIndex.build(vectors, ids, metadata={"model": "old"})
    new_ids = [pid.replace("sku", "alt") for pid in ids]
    new = ProductIndex.build(vectors[::-1].copy(), new_ids, metadata={"model": "new"})
    return old, new, queries


@pytest.mark.parametrize("file", ["product_ids.json", "index.faiss"])
def test_a_file_of_another_index_is_refused(tmp_path, catalogue, file):
    old, new, _ = _old_and_new(catalogue)
    old.save(tmp_path / "old")
    new.save(tmp_path / "new")
    assert os.path.getsize(tmp_path / "old" / file) == os.path.getsize(tmp_path / "new" / file)
    shutil.copyfile(tmp_path / "new" / file, tmp_path / "old" / file)
    with pytest.raises(ValueError) as error:
        ProductIndex.load(tmp_path / "old")
    message = str(error.value)
    assert str(tmp_path / "old") in message and f"{file} is not the file index_config.json was saved with" in message
    assert "Rebuild the index" in message


def _assert_is(index_folder, expected, queries):
    loaded = ProductIndex.load(index_folder)
    assert loaded.product_ids == expected.product_ids and loaded.metadata == expected.metadata
    assert loaded.search(queries, k=5)[0] == expected.search(queries, k=5)[0]
    np.testing.assert_array_equal(loaded.search(queries, k=5)[1], expected.search(queries, k=5)[1])


@pytest.mark.parametrize("step", ["write_index", "first_rename", "second_rename"])
def test_a_failed_save_leaves_the_old_index(tmp_path, catalogue, monkeypatch, step):
    import faiss

    old, new, queries = _old_and_new(catalogue)
    folder = tmp_path / "index"
    old.save(folder)
    renames = []

    def failing_write_index(index, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 100)
        raise OSError(28, "No space left on device")

    def failing_rename(source, target):
        renames.append(source)
        if len(renames) == {"first_rename": 1, "second_rename": 2}[step]:
            raise OSError(28, "No space left on device")
        real_rename(source, target)

    real_rename = os.rename
    if step == "write_index":
        monkeypatch.setattr(faiss, "write_index", failing_write_index)
    else:
        monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        new.save(folder)
    monkeypatch.undo()
    _assert_is(folder, old, queries)
    assert os.listdir(tmp_path) == ["index"]


# Saves `new` over the index in FOLDER and is killed (os._exit, no clean-up runs) at STEP.
KILLED_SAVE = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    from make_hf.index import ProductIndex

    folder, step, vectors_file = sys.argv[1:4]
    vectors = np.load(vectors_file)
    new = ProductIndex.build(vectors[::-1].copy(), [f"alt-{i:04d}" for i in range(len(vectors))],
                             metadata={"model": "new"})
    if step == "writing_ids":  # the FAISS file is written, the ids are not
        dump = json.dump
        json.dump = lambda data, *args, **kw: os._exit(9) if isinstance(data, list) else dump(data, *args, **kw)
    else:  # the old folder is moved aside, the new one not yet in its place
        rename, renames = os.rename, []

        def killed_rename(source, target):
            renames.append(source)
            if len(renames) == 2:
                os._exit(9)
            rename(source, target)

        os.rename = killed_rename
    new.save(folder)
    """
)


@pytest.mark.parametrize("step", ["writing_ids", "between_renames"])
def test_a_killed_save_leaves_the_old_index_and_the_next_save_cleans_up(tmp_path, catalogue, step):
    vectors, _, ids = catalogue
    old, new, queries = _old_and_new(catalogue)
    folder = tmp_path / "indexes" / "index"
    old.save(folder)
    np.save(tmp_path / "vectors.npy", vectors)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), step, str(tmp_path / "vectors.npy")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stderr[-3000:]
    assert len(os.listdir(folder.parent)) == 2  # the half-written new folder (and maybe the old one moved aside)
    _assert_is(folder, old, queries)

    new.save(folder)
    assert os.listdir(folder.parent) == ["index"]
    _assert_is(folder, new, queries)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"product_ids": ["a"] * 4}, r"product_ids\[1\]` = 'a' is already in the index \(row 0\)"),
        ({"product_ids": ["a", "b"]}, "Got 4 embeddings but 2 product ids"),
        ({"kind": "lsh"}, "Unknown index kind 'lsh'"),
        ({"kind": "ivfpq", "pq_m": 3}, "`pq_m`=3 must divide the embedding dimension 16"),
        ({"kind": "ivfpq", "pq_bits": 8}, "needs at least 256 products"),
    ],
)
def test_build_errors(catalogue, kwargs, message):
    vectors, _, _ = catalogue
    kwargs = {"product_ids": ["a", "b", "c", "d"], **kwargs}
    with pytest.raises(ValueError, match=message):
        ProductIndex.build(vectors[:4], **kwargs)


def test_query_errors(catalogue):
    vectors, queries, ids = catalogue
    index = ProductIndex.build(vectors[:10], ids[:10])
    with pytest.raises(ValueError, match="has dimension 8 but the index holds 16"):
        index.search(queries[:, :8])
    bad = queries[:3].copy()
    bad[2, 0] = np.nan
    with pytest.raises(ValueError, match=r"query_embeds\[2\]` contains NaN"):
        index.search(bad)


def test_missing_faiss_says_how_to_install(monkeypatch, catalogue):
    vectors, _, ids = catalogue
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match=r"pip install make-hf\[index\]"):
        ProductIndex.build(vectors[:4], ids[:4])


def test_embeddings_file_round_trip(tmp_path, catalogue):
    vectors, _, ids = catalogue
    weights = torch.rand(NUM_PRODUCTS, 2)
    path = save_embeddings(tmp_path / "out" / "embeds.safetensors", torch.from_numpy(vectors), ids,
                           modal_weights=weights, metadata={"condition": "title"})
    loaded = load_embeddings(path)
    assert torch.equal(loaded.product_embeds, torch.from_numpy(vectors))
    assert loaded.product_ids == ids and torch.equal(loaded.modal_weights, weights)
    assert loaded.metadata == {"condition": "title"}
    assert os.listdir(tmp_path / "out") == ["embeds.safetensors"]
    with pytest.raises(FileNotFoundError, match="make-hf encode"):
        load_embeddings(tmp_path / "nope.safetensors")
