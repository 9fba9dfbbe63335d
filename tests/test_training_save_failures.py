"""A full disk (or another failed write) while saving a checkpoint or the trained model: a `TrainingSaveError` that
says so, names the folder, keeps the previous checkpoint whole and resumable, and says how to go on; never torch's
bare "unexpected pos 274304 vs 274196"."""

import errno
import json
import os

import pytest
from accelerate import Accelerator

from make_hf.modeling_make import MakeModel
from make_hf.training import PretrainArguments, pretrain
from make_hf.training.checkpoints import (
    TrainingSaveError,
    explained_save_failure,
    list_checkpoints,
    publish_checkpoint,
    remove_interrupted_checkpoints,
    staging_path,
)
from test_pretrain import TINY

DISK_FULL = {
    "errno": lambda: OSError(errno.ENOSPC, "No space left on device"),
    "torch_zip_writer": lambda: RuntimeError(
        "[enforce fail at inline_container.cc:672] . unexpected pos 274304 vs 274196"
    ),
}


def _args(output_dir, **changes):
    return PretrainArguments(output_dir=str(output_dir), **{**TINY, "checkpointing_steps": 2, **changes})


def _fail_at_step(monkeypatch, step, error):
    """`save_state` writes part of the checkpoint of `step`, then fails as a full disk does."""
    save_state = Accelerator.save_state

    def failing_save_state(self, output_dir=None, **kwargs):
        if os.path.basename(output_dir) != os.path.basename(staging_path("", step)):
            return save_state(self, output_dir, **kwargs)
        os.makedirs(output_dir, exist_ok=True)
        with open(os.path.join(output_dir, "optimizer.bin"), "wb") as f:
            f.write(b"\0" * 1000)  # the half-written file a full disk leaves
        raise error()

    monkeypatch.setattr(Accelerator, "save_state", failing_save_state)


@pytest.mark.parametrize("error", sorted(DISK_FULL))
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch, error):
    _fail_at_step(monkeypatch, 4, DISK_FULL[error])
    checkpoints = tmp_path / "run" / "checkpoints"
    with pytest.raises(TrainingSaveError) as raised:
        pretrain(_args(tmp_path / "run", max_train_steps=6))
    message = str(raised.value)
    assert message.startswith(f"Saving the checkpoint of step 4 to {str(checkpoints)!r} failed: the disk is full")
    assert f"{str(checkpoints / 'checkpoint-2')!r}, is intact" in message
    assert "Free disk space" in message and "--resume_from_checkpoint latest" in message
    assert "unexpected pos" not in message.split("failed:")[0]
    assert sorted(os.listdir(checkpoints)) == ["checkpoint-2", "processor"]  # the unfinished one is gone
    assert [step for step, _ in list_checkpoints(checkpoints)] == [2]
    state = json.loads((checkpoints / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["step"] == 2
    if error == "errno":  # once, not per error kind: the intact checkpoint really resumes
        monkeypatch.undo()
        results = pretrain(_args(tmp_path / "run", max_train_steps=6, resume_from_checkpoint="latest"))
        assert results["steps"] == 6
        assert [step for step, _ in list_checkpoints(checkpoints)] == [4, 6]  # the default limit keeps two


def test_a_full_disk_while_saving_the_trained_model(tmp_path, monkeypatch):
    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(MakeModel, "save_pretrained", full_disk)
    output_dir = tmp_path / "run"
    with pytest.raises(TrainingSaveError) as raised:
        pretrain(_args(output_dir, max_train_steps=2))
    message = str(raised.value)
    assert message.startswith(f"Saving the trained model to {str(output_dir)!r} failed: the disk is full")
    assert "checkpoint-2" in message and "--resume_from_checkpoint latest" in message
    assert not (output_dir / "model.safetensors").exists()
    assert [entry for entry in os.listdir(tmp_path) if entry != "run"] == []  # no staging folder left beside it


def test_a_full_disk_as_safetensors_reports_it(tmp_path):
    from safetensors import SafetensorError

    _complete_checkpoint(tmp_path / "checkpoint-2", 2, "earlier")
    with pytest.raises(TrainingSaveError) as raised:
        with explained_save_failure("the checkpoint of step 4", str(tmp_path), str(tmp_path)):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert "failed: the disk is full (SafetensorError: " in str(raised.value)
    assert f"{str(tmp_path / 'checkpoint-2')!r}, is intact" in str(raised.value)


def test_another_write_failure_is_not_called_a_full_disk(tmp_path):
    with pytest.raises(TrainingSaveError) as raised:
        with explained_save_failure("the checkpoint of step 8", str(tmp_path), str(tmp_path)):
            raise PermissionError(errno.EACCES, "Permission denied")
    message = str(raised.value)
    assert "failed: the write failed (PermissionError: [Errno 13] Permission denied)" in message
    assert "no complete checkpoint to resume from" in message


def test_errors_that_are_not_writes_pass_through(tmp_path):
    with pytest.raises(TypeError):
        with explained_save_failure("the trained model", str(tmp_path), str(tmp_path)):
            raise TypeError("a bug, not a disk")


def _complete_checkpoint(folder, step, marker):
    os.makedirs(folder, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"step": step, "marker": marker}))


def test_a_checkpoint_is_renamed_into_place_only_when_complete(tmp_path):
    _complete_checkpoint(tmp_path / "checkpoint-4", 4, "earlier run")
    _complete_checkpoint(tmp_path / ".checkpoint-4.staging", 4, "this run")
    publish_checkpoint(str(tmp_path), 4)
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4"]
    assert json.loads((tmp_path / "checkpoint-4" / "trainer_state.json").read_text())["marker"] == "this run"

    # What a killed save leaves is never resumed from, and the next run removes it.
    (tmp_path / ".checkpoint-6.staging").mkdir()
    (tmp_path / ".checkpoint-6.staging" / "model.safetensors").write_bytes(b"\0")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [4]
    assert remove_interrupted_checkpoints(str(tmp_path)) == [str(tmp_path / ".checkpoint-6.staging")]
