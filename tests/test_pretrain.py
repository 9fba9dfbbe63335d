"""The pre-training script end to end on tiny settings: two processes, exact resumption, bad rows."""

import io
import json
import os
import shutil
import subprocess
import sys

from PIL import Image
from safetensors.torch import load_file

from make_hf.training import PretrainArguments, pretrain
from model_inputs import TINY_RUN

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(TINY_RUN, synthetic_products=96)


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    full = str(tmp_path / "full")
    pretrain(PretrainArguments(output_dir=full, checkpointing_steps=2, **TINY))

    # A run that stopped right after its step-2 checkpoint: only that checkpoint survives.
    resumed = str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    shutil.copytree(
        os.path.join(full, "checkpoints", "checkpoint-2"), os.path.join(resumed, "checkpoints", "checkpoint-2")
    )
    results = pretrain(PretrainArguments(output_dir=resumed, resume_from_checkpoint="latest", **TINY))

    assert results["steps"] == TINY["max_train_steps"]
    expected, actual = _weights(full), _weights(resumed)
    assert expected.keys() == actual.keys()
    for name in expected:
        assert (expected[name] == actual[name]).all(), f"{name} differs after resuming"
    # The weights moved after the checkpoint, so equality above is not just both runs stopping at step 2.
    at_checkpoint = _weights(os.path.join(full, "checkpoints", "checkpoint-2"))
    assert any(not (at_checkpoint[name] == expected[name]).all() for name in expected)


def test_final_outputs_load_and_describe_the_run(tmp_path):
    from make_hf import MakeModel, MakeProcessor

    out = str(tmp_path / "run")
    results = pretrain(PretrainArguments(output_dir=out, **TINY))
    for name in ("README.md", "eval_results.json", "eval_results.md", "loss_curves.png", "recall_at_k.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".staging")]
    model, processor = MakeModel.from_pretrained(out), MakeProcessor.from_pretrained(out)
    assert processor.keyword_extractor.is_fitted
    assert 0.0 <= results["title+image"]["overall"]["recall@10"] <= 1.0
    assert set(results) >= {"title+image", "title", "image", "image_weight_by_category"}
    batch = processor(query=["red tee"], title=["zerel cotton tshirt"], images=[Image.new("RGB", (32, 32), "red")])
    assert model(**batch).product_embeds.shape == (1, model.config.projection_dim)


def _png(color):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_rows_are_skipped_counted_and_reported(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    colours = ["red", "blue", "green", "white", "black", "yellow"]
    rows = []
    for i in range(60):
        colour = colours[i % len(colours)]
        name = f"images/p{i}.png"
        (tmp_path / name).write_bytes(_png(colour))
        rows.append({"query": f"{colour} mug", "title": f"ceramic {colour} mug number {i}", "image": name,
                     "product_id": f"p{i}"})
    (images / "corrupt.png").write_bytes(b"this is not a png")
    rows[3]["image"] = "images/does-not-exist.png"
    rows[7]["image"] = "images/corrupt.png"
    rows[11]["query"] = "   "
    data = tmp_path / "logs.jsonl"
    data.write_text("\n".join(json.dumps(row) for row in rows) + "\n")

    args = dict(TINY, synthetic_products=0)
    args.pop("synthetic_products")
    results = pretrain(PretrainArguments(dataset=str(data), output_dir=str(tmp_path / "run"), **args))

    skipped = results["skipped_rows"]
    assert skipped["total"] == 3
    assert skipped["by_reason"] == {"missing_image": 1, "corrupt_image": 1, "empty_query": 1}
    assert sorted(row["index"] for row in skipped["rows"]) == [3, 7, 11]
    assert results["steps"] == TINY["max_train_steps"]


def test_two_process_launch(tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        os.path.join(REPO, "examples", "pretrain.py"),
        "--output_dir", str(out),
    ]
    for key, value in TINY.items():
        command += [f"--{key}", str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    completed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert "2 process(es)" in completed.stderr + completed.stdout
    assert os.path.isfile(out / "model.safetensors")
