"""Pre-training fails safely: nothing trained is lost, nothing wrong is trained on, and odd settings are said."""

import io
import json
import os

import datasets
import pytest
from PIL import Image
from safetensors.torch import load_file

import make_hf.training.in_memory as in_memory
import make_hf.training.trainer as trainer
from make_hf.training import PretrainArguments, pretrain
from model_inputs import TINY_RUN

TINY = dict(TINY_RUN, synthetic_products=200, max_train_steps=2)


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    # Noise does not compress, so half the file cuts into the pixel data.
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def test_a_failing_final_evaluation_keeps_the_trained_model(tmp_path, monkeypatch):
    from make_hf import MakeModel, MakeProcessor

    load = in_memory.load_pretraining_data

    def with_a_truncated_test_image(args):
        data = load(args)
        rows = data.test_products.cast_column("image", datasets.Image(decode=False)).to_list()
        rows[5]["image"] = {"bytes": _truncated_png(), "path": None}
        data.test_products = datasets.Dataset.from_list(rows)
        return data

    monkeypatch.setattr(in_memory, "load_pretraining_data", with_a_truncated_test_image)
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


def test_a_non_finite_loss_is_refused_before_the_weights_change(tmp_path, monkeypatch):
    import torch

    class NaNPixelsOnTheSecondBatch(trainer.MakeCollator):
        calls = 0

        def __call__(self, rows):
            batch = super().__call__(rows)
            type(self).calls += 1
            if type(self).calls == 2:
                batch["pixel_values"][0] = float("nan")
            return batch

    models = []

    def recording_optimizer(model, *args, **kwargs):
        models.append(model)
        return create_optimizer(model, *args, **kwargs)

    create_optimizer = trainer.create_optimizer
    monkeypatch.setattr(trainer, "MakeCollator", NaNPixelsOnTheSecondBatch)
    monkeypatch.setattr(trainer, "create_optimizer", recording_optimizer)
    with pytest.raises(FloatingPointError, match=r"Step 2: the loss is not finite \(loss, .*--learning_rate"):
        pretrain(PretrainArguments(output_dir=str(tmp_path / "run"), **dict(TINY, max_train_steps=3)))
    for name, parameter in models[0].named_parameters():
        assert torch.isfinite(parameter).all(), f"{name} is not finite"


INFINITE_LOSS_ON_ONE_PROCESS = """
import os, sys
from make_hf import MakeModel
from make_hf.training import PretrainArguments, pretrain

forward, calls = MakeModel.forward, []

def forward_with_an_infinite_loss_on_process_one(self, *args, **kwargs):
    outputs = forward(self, *args, **kwargs)
    calls.append(1)
    if len(calls) == 2 and os.environ["RANK"] == "1":
        outputs.loss = outputs.loss + float("inf")
    return outputs

MakeModel.forward = forward_with_an_infinite_loss_on_process_one
pretrain(PretrainArguments(output_dir=sys.argv[1], **{settings}))
"""


def test_every_process_refuses_a_non_finite_loss_of_one_of_them(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "infinite_loss_on_one_process.py"
    script.write_text(INFINITE_LOSS_ON_ONE_PROCESS.replace("{settings}", repr(dict(TINY, max_train_steps=3))))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               str(script), str(tmp_path / "run")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # A process that stopped alone would leave the other waiting in a collective until the timeout.
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    # Process 0's own loss is finite: it stops because process 1's is not.
    for rank in (0, 1):
        assert f"[rank{rank}]: FloatingPointError: Step 2: the loss is not finite (loss, on process(es) [1])" in (
            completed.stderr
        )


def _history(output_dir):
    with open(os.path.join(output_dir, "training_history.json"), encoding="utf-8") as f:
        return json.load(f)["losses"]


def test_a_warm_up_longer_than_the_run_is_capped_so_the_learning_rate_peaks(tmp_path, caplog):
    out = str(tmp_path / "run")
    with caplog.at_level("WARNING"):
        pretrain(PretrainArguments(output_dir=out, **dict(TINY, max_train_steps=10, warmup_steps=50)))
    assert "--warmup_steps 50 is not shorter than the run's 10 steps" in caplog.text
    # A tenth of 10 steps: the rate logged after the first step is the peak.
    assert max(row["lr"] for row in _history(out)) == pytest.approx(PretrainArguments.learning_rate)


def test_no_validation_in_a_run_shorter_than_eval_steps_is_warned_once(tmp_path, caplog):
    with caplog.at_level("WARNING"):
        pretrain(PretrainArguments(output_dir=str(tmp_path / "run"), **dict(TINY, eval_steps=5)))
    assert caplog.text.count("--eval_steps 5 is not below the run's 2 steps") == 1


def test_num_train_epochs_takes_effect_when_max_train_steps_is_not_given(tmp_path):
    from transformers import HfArgumentParser

    (default,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(args=[])
    assert default.max_train_steps == 300
    (both,) = HfArgumentParser(PretrainArguments).parse_args_into_dataclasses(
        args=["--num_train_epochs", "2", "--max_train_steps", "7"]
    )
    assert both.max_train_steps == 7
    settings = dict(TINY, per_device_train_batch_size=16, num_train_epochs=1)
    del settings["max_train_steps"]
    args = PretrainArguments(output_dir=str(tmp_path / "run"), **settings)
    assert args.max_train_steps is None

    results = pretrain(args)
    train_rows = len(in_memory.load_pretraining_data(args).train)
    assert results["steps"] == train_rows // 16


def test_a_new_run_removes_what_an_interrupted_run_left(tmp_path):
    out = tmp_path / "run"
    stale = [
        tmp_path / ".run.k3j_x9a2.staging",  # staged_directory(out), killed before its moves
        out / ".eval_results.json.a1b2c3d4.tmp",  # atomic_path, killed before its rename
        out / "checkpoints" / "checkpoint-2" / ".trainer_state.json.zz9_8y7x.tmp",
        out / "checkpoints" / "checkpoint-2",  # save_state killed before trainer_state.json
    ]
    kept = [tmp_path / ".other.k3j_x9a2.staging", out / "notes.tmp", out / "my.staging"]
    for path in stale[:1] + kept[:1] + kept[2:]:
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"half")
    for path in stale[1:3] + kept[1:2]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")

    pretrain(PretrainArguments(output_dir=str(out), **TINY))

    for path in stale:
        assert not path.exists(), f"{path} was left behind"
    for path in kept:
        assert path.exists(), f"{path} is not a leftover of this package, yet was deleted"


def test_the_default_run_reports_to_no_tracker_and_warns_nothing_about_trackers(tmp_path, recwarn):
    settings = {key: value for key, value in TINY.items() if key != "report_to"}
    args = PretrainArguments(output_dir=str(tmp_path / "run"), **settings)
    assert args.report_to == "none"
    pretrain(args)
    assert not [w for w in recwarn if "log_with" in str(w.message)]
