"""`make-hf encode` in shards: two gloo processes (`accelerate launch --multi_gpu`) write what one process writes, a
killed encode resumes with only its missing shards, shards of another encode are never mixed in, and `make-hf index`
builds from the shards."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image

from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.catalogue_encoding import DEFAULT_SHARD_SIZE, MANIFEST_FILE, shard_file
from make_hf.cli import build_parser, main
from make_hf.encoding import encode_products, encode_queries
from make_hf.evaluation import read_rows
from make_hf.index import ProductIndex, load_embeddings, save_embeddings

# 14 rows in shards of 4: shard 1 (rows 4-7) has no images, so under --condition image it keeps no product.
NUM_PRODUCTS, SHARD_SIZE, NUM_SHARDS = 14, 4, 4
QUERIES = ["red mug", "blue charger cable", "green cotton dress"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _save_model(folder, titles, seed):
    config = MakeConfig.from_preset("make-tiny")
    tokenizer = train_tokenizer(titles * 3, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer, title_max_length=16).fit_keywords(titles)
    torch.manual_seed(seed)
    MakeModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalogue")
    (root / "images").mkdir()
    products = []
    for row in range(NUM_PRODUCTS):
        pid = f"p{row:02d}"
        kind = ("mug", "charger", "dress")[row % 3]
        image = None
        if not 4 <= row < 8:
            # A colour of its own: products with equal vectors would tie, and ties may come back in either order.
            colour = (18 * row, 250 - 16 * row, (97 * row) % 256)
            Image.new("RGB", (16, 16), colour).save(root / "images" / f"{pid}.png")
            image = f"images/{pid}.png"
        products.append({"product_id": pid, "title": f"{kind} number {row} cotton", "image": image})
    with open(root / "products.jsonl", "w") as f:
        f.writelines(json.dumps(p) + "\n" for p in products)
    _save_model(root / "model", [p["title"] for p in products] + QUERIES, seed=0)
    return root


def _encode(capsys, shop, output, *extra, condition="image", catalogue=None, model=None):
    argv = ["encode", "--model", model or shop / "model", "--catalogue", catalogue or shop / "products.jsonl",
            "--output", output, "--condition", condition, "--shard-size", SHARD_SIZE, "--batch-size", 3, *extra]
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def one_process_reference(shop):
    """The catalogue encoded in one call of `encode_products`, as `make-hf encode` did before it wrote shards."""
    model, processor = MakeModel.from_pretrained(shop / "model"), MakeProcessor.from_pretrained(shop / "model")
    products = read_rows(shop / "products.jsonl")
    return {condition: encode_products(model, processor, products, conditions=(condition,), batch_size=3,
                                       show_progress=False)
            for condition in ("image", "title+image")}


@pytest.fixture(scope="module")
def two_process_encode(shop):
    """`accelerate launch --multi_gpu --num_processes 2 -m make_hf.cli encode`: two CPU processes over gloo."""
    output = shop / "two-processes"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "make_hf.cli", "encode", "--model", str(shop / "model"), "--catalogue", str(shop / "products.jsonl"),
        "--output", str(output), "--condition", "image", "--shard-size", str(SHARD_SIZE), "--batch-size", "3",
    ]
    result = subprocess.run(command, env=ENV, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result.stdout


def test_two_processes_write_what_one_process_writes(shop, two_process_encode, one_process_reference, capsys):
    output, log = two_process_encode
    # The missing shards are dealt out in turn: process 0 takes 0 and 2, process 1 takes 1 and 3, once each.
    for shard, process in ((0, 0), (1, 1), (2, 0), (3, 1)):
        assert f"Process {process}: encoded shard {shard} of {NUM_SHARDS} ->" in log
    assert log.count(": encoded shard ") == NUM_SHARDS
    assert log.count("Encoded 10 products (image, dim 32) (4 without what condition 'image' needs") == 1

    status, out, err = _encode(capsys, shop, shop / "one-process", "--quiet")
    assert status == 0, err
    assert "Encoded 10 products (image, dim 32) (4 without what condition 'image' needs were left out)" in out
    assert f"{NUM_SHARDS} of {NUM_SHARDS} encoded now by 1 process(es)." in out
    expected_files = sorted([MANIFEST_FILE] + [shard_file(i, NUM_SHARDS) for i in range(NUM_SHARDS)])
    assert sorted(os.listdir(output)) == sorted(os.listdir(shop / "one-process")) == expected_files

    two, one = load_embeddings(output), load_embeddings(shop / "one-process")
    reference = one_process_reference["image"]
    keep = reference.retrievable["image"]
    kept_ids = [pid for pid, ok in zip(reference.product_ids, keep.tolist()) if ok]
    assert two.product_ids == one.product_ids == kept_ids
    assert two.metadata == one.metadata and two.metadata["skipped_products"] == 4
    assert (two.product_embeds - one.product_embeds).abs().max().item() <= 1e-6
    assert (two.product_embeds - reference.embeds["image"][keep]).abs().max().item() <= 1e-6
    shard_1 = load_embeddings(output / shard_file(1, NUM_SHARDS))
    assert shard_1.product_embeds.shape == (0, 32) and shard_1.metadata["skipped_product_ids"] == [
        "p04", "p05", "p06", "p07"]


KILL_AT_SECOND_SHARD = """
    import os, signal, sys
    import safetensors.torch
    from make_hf.cli import main

    save_file, calls = safetensors.torch.save_file, []

    def killed_while_writing_the_second_shard(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 2:
            with open(path, "wb") as f:
                f.write(b"half a shard")
            os.kill(os.getpid(), signal.SIGKILL)
        save_file(tensors, path, metadata=metadata)

    safetensors.torch.save_file = killed_while_writing_the_second_shard
    sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_encode_resumes_with_only_its_missing_shards(shop, one_process_reference, capsys):
    output = shop / "killed"
    argv = ["encode", "--model", shop / "model", "--catalogue", shop / "products.jsonl", "--output", output,
            "--condition", "title+image", "--shard-size", SHARD_SIZE, "--batch-size", 3, "--quiet"]
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(KILL_AT_SECOND_SHARD), *map(str, argv)], env=ENV,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    assert result.returncode == -9, result.stderr[-3000:]
    left = sorted(os.listdir(output))
    temporary = [name for name in left if name.startswith(f".{shard_file(1, NUM_SHARDS)}.")]
    assert [name for name in left if not name.startswith(".")] == [MANIFEST_FILE, shard_file(0, NUM_SHARDS)]
    assert len(temporary) == 1 and temporary[0].endswith(".tmp")
    with pytest.raises(ValueError, match=r"incomplete: shard\(s\) 1, 2, 3 of 4 are missing .* Rerun the same"):
        load_embeddings(output)
    status, _, err = _run_index(capsys, output, shop / "index-of-killed")
    assert status == 1 and "incomplete" in err and not os.path.exists(shop / "index-of-killed")

    first_shard = output / shard_file(0, NUM_SHARDS)
    written = first_shard.stat().st_mtime_ns
    status, out, err = _encode(capsys, shop, output, condition="title+image")
    assert status == 0, err
    assert [line for line in out.splitlines() if line.startswith("Process")] == [
        f"Process 0: encoded shard {i} of {NUM_SHARDS} -> {output / shard_file(i, NUM_SHARDS)}" for i in (1, 2, 3)]
    assert f"3 of {NUM_SHARDS} encoded now by 1 process(es), 1 kept from an earlier run." in out
    assert first_shard.stat().st_mtime_ns == written
    assert not [name for name in os.listdir(output) if name.startswith(".")]

    # A deleted shard and a stray temporary file: only that shard is encoded again.
    os.remove(output / shard_file(2, NUM_SHARDS))
    (output / f".{shard_file(3, NUM_SHARDS)}.abcd1234.tmp").write_bytes(b"")
    kept = {i: (output / shard_file(i, NUM_SHARDS)).stat().st_mtime_ns for i in (0, 1, 3)}
    status, out, err = _encode(capsys, shop, output, condition="title+image")
    assert status == 0, err
    assert [line for line in out.splitlines() if line.startswith("Process")] == [
        f"Process 0: encoded shard 2 of {NUM_SHARDS} -> {output / shard_file(2, NUM_SHARDS)}"]
    assert {i: (output / shard_file(i, NUM_SHARDS)).stat().st_mtime_ns for i in (0, 1, 3)} == kept
    assert not [name for name in os.listdir(output) if name.startswith(".")]

    resumed, reference = load_embeddings(output), one_process_reference["title+image"]
    assert resumed.product_ids == reference.product_ids and resumed.metadata["skipped_products"] == 0
    assert (resumed.product_embeds - reference.embeds["title+image"]).abs().max().item() <= 1e-6
    assert (resumed.modal_weights - reference.modal_weights).abs().max().item() <= 1e-6


def test_shards_of_another_encode_are_never_mixed_in(shop, two_process_encode, capsys):
    output = shop / "changed"
    shutil.copytree(two_process_encode[0], output)
    written = {name: (output / name).stat().st_mtime_ns for name in os.listdir(output)}
    changed = shop / "changed.jsonl"
    # Under --condition image, a product's vector changes with its picture.
    changed.write_text((shop / "products.jsonl").read_text().replace("images/p09.png", "images/p10.png"))
    _save_model(shop / "other-model", ["other titles only"] + QUERIES, seed=1)

    refusals = [
        ({"catalogue": changed}, "catalogue (its SHA-256)"),
        ({"model": shop / "other-model"}, "model (weights, config or processor)"),
        ({"extra": ("--shard-size", 5)}, "--shard-size: 4 before, 5 now"),
        ({"condition": "title"}, "--condition: 'image' before, 'title' now"),
    ]
    for change, named in refusals:
        extra = change.pop("extra", ())
        argv = ["encode", "--model", change.get("model", shop / "model"), "--catalogue",
                change.get("catalogue", shop / "products.jsonl"), "--output", output, "--condition",
                change.get("condition", "image"), "--shard-size", SHARD_SIZE, "--quiet", *extra]
        status = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert status == 1 and named in err and "pass --overwrite to delete them" in err, err
    assert {name: (output / name).stat().st_mtime_ns for name in os.listdir(output)} == written

    status, out, err = _encode(capsys, shop, output, "--overwrite", "--quiet", catalogue=changed)
    assert status == 0 and f"{NUM_SHARDS} of {NUM_SHARDS} encoded now" in out, err
    fresh, old = load_embeddings(output), load_embeddings(two_process_encode[0])
    assert fresh.metadata["catalogue"] == str(changed) and fresh.product_ids == old.product_ids
    differs = (fresh.product_embeds - old.product_embeds).abs().amax(dim=1) > 1e-6
    assert [pid for pid, d in zip(fresh.product_ids, differs.tolist()) if d] == ["p09"]

    (shop / "not-an-encode").mkdir()
    (shop / "not-an-encode" / "notes.txt").write_text("mine")
    status, _, err = _encode(capsys, shop, shop / "not-an-encode", "--overwrite", "--quiet")
    assert status == 1 and "holds files but no manifest.json (e.g. 'notes.txt')" in err
    status, _, err = _encode(capsys, shop, shop / "not-an-encode" / "notes.txt", "--quiet")
    assert status == 1 and "is a file" in err and (shop / "not-an-encode" / "notes.txt").read_text() == "mine"


def _run_index(capsys, embeddings, output, kind="flat"):
    status = main(["index", "--embeddings", str(embeddings), "--output", str(output), "--kind", kind])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_index_from_the_shards_searches_as_from_one_process(shop, two_process_encode, one_process_reference,
                                                           capsys):
    output = two_process_encode[0]
    status, out, err = _run_index(capsys, output, shop / "sharded-index")
    assert status == 0 and "ProductIndex(kind='flat', num_products=10, dim=32)" in out, err
    sharded = ProductIndex.load(shop / "sharded-index")
    assert sharded.metadata["model"] == str(shop / "model") and sharded.metadata["embeddings"] == str(output)

    reference = one_process_reference["image"]
    keep = reference.retrievable["image"]
    single_file = save_embeddings(shop / "single.safetensors", reference.embeds["image"][keep],
                                  [pid for pid, ok in zip(reference.product_ids, keep.tolist()) if ok])
    assert _run_index(capsys, single_file, shop / "single-index")[0] == 0
    single = ProductIndex.load(shop / "single-index")

    model, processor = MakeModel.from_pretrained(shop / "model"), MakeProcessor.from_pretrained(shop / "model")
    queries = encode_queries(model, processor, QUERIES, show_progress=False)
    sharded_ids, sharded_scores = sharded.search(queries, k=5)
    single_ids, single_scores = single.search(queries, k=5)
    assert sharded_ids == single_ids
    assert sharded_scores == pytest.approx(single_scores, abs=1e-5)


def test_the_parser_default_shard_size_is_the_library_one():
    arguments = build_parser().parse_args(["encode", "--model", "m", "--catalogue", "c.jsonl", "--output", "o"])
    assert arguments.shard_size == DEFAULT_SHARD_SIZE and arguments.overwrite is False
