"""Pre-training fails safely: nothing trained is lost, nothing wrong is trained on, and odd settings are said."""

import io
import os

import datasets
import pytest
from PIL import Image
from safetensors.torch import load_file

import make_hf.training.trainer as trainer
from make_hf.training import PretrainArguments, pretrain

TINY = dict(
    model="make-tiny",
    synthetic_products=200,
    per_device_train_batch_size=8,
    max_train_steps=2,
    warmup_steps=1,
    eval_steps=0,
    logging_steps=1,
    eval_batch_size=64,
    report_to="none",
)


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    # Noise does not compress, so half the file cuts into the pixel data.
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_a_failing_final_evaluation_keeps_the_trained_model(tmp_path, monkeypatch):
    from make_hf import MakeModel, MakeProcessor

    load = trainer.load_pretraining_data

    def with_a_truncated_test_image(args):
        data = load(args)
        rows = data.test_products.cast_column("image", datasets.Image(decode=False)).to_list()
        rows[5]["image"] = {"bytes": _truncated_png(), "path": None}
        data.test_products = datasets.Dataset.from_list(rows)
        return data

    monkeypatch.setattr(trainer, "load_pretraining_data", with_a_truncated_test_image)
    out = str(tmp_path / "run")
    with pytest.raises(RuntimeError, match=r"products\[5\] \(product_id '[^']+'\).*truncated") as failure:
        pretrain(PretrainArguments(output_dir=out, **TINY))
    assert "evaluate_retrieval.py" in str(failure.value)
    model, processor = MakeModel.from_pretrained(out), MakeProcessor.from_pretrained(out)
    assert processor.keyword_extractor.is_fitted and model.num_parameters() > 0
    assert os.path.getsize(os.path.join(out, "README.md")) > 0
    assert not os.path.exists(os.path.join(out, "eval_results.json"))


def test_resuming_a_finished_run_trains_no_step(tmp_path, caplog):
    out = str(tmp_path / "run")
    settings = dict(TINY, max_train_steps=4)
    pretrain(PretrainArguments(output_dir=out, checkpointing_steps=2, **settings))
    finished = load_file(os.path.join(out, "model.safetensors"))

    with caplog.at_level("INFO"):
        results = pretrain(PretrainArguments(output_dir=out, resume_from_checkpoint="latest", **settings))

    assert results["steps"] == 4
    assert "no step is trained" in caplog.text
    resumed = load_file(os.path.join(out, "model.safetensors"))
    for name in finished:
        assert (finished[name] == resumed[name]).all(), f"{name} changed when resuming a finished run"


def test_a_batch_of_one_row_is_refused():
    with pytest.raises(ValueError, match="--per_device_train_batch_size 1 .*in-batch negatives"):
        PretrainArguments(**dict(TINY, per_device_train_batch_size=1))
