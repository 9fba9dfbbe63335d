"""A push whose Hub cannot be reached, or goes away half-way, fails with one line saying what failed, the endpoint
and what to check, exits non-zero, and reports nothing as pushed: the upload is one commit, which never happened."""

import importlib.util
import socket
from pathlib import Path

import pytest
from huggingface_hub import constants as hub_constants

from hub_server import LoopbackHub
from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.cli import main as cli_main
from make_hf.hub import HubPushError, push_to_hub
from test_pretrain import TINY

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pretrain.py"
TITLES = ["red running shoes", "usb c charger", "blue cotton shirt", "wooden desk lamp"]


@pytest.fixture
def online(monkeypatch):
    """Online mode (the tests run offline) with the Hub client's retry backoff made instant."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.utils._http.time.sleep", lambda seconds: None)


@pytest.fixture
def closed_endpoint():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed once the socket is: connections refused


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    config = MakeConfig.from_preset("make-tiny")
    tokenizer = train_tokenizer(TITLES, vocab_size=config.query_config.vocab_size, min_frequency=1)
    MakeModel(config).save_pretrained(folder)
    MakeProcessor.from_config(config, tokenizer).fit_keywords(TITLES, TITLES).save_pretrained(folder)
    return folder


def _assert_one_clear_line(text, endpoint, folder):
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text and endpoint in lines[0] and str(folder) in lines[0]
    assert "cannot be reached" in lines[0] and "Nothing of this upload was committed" in lines[0]
    assert "HF_ENDPOINT" in lines[0] and "make-hf push" in lines[0]


def test_make_hf_push_to_a_dead_endpoint(online, closed_endpoint, model_folder, capsys):
    status = cli_main(["push", str(model_folder), "org/make-shop", "--endpoint", closed_endpoint])
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    _assert_one_clear_line(captured.err, closed_endpoint, model_folder)


def _hub_dropping(path_part: str) -> LoopbackHub:
    """A loopback Hub that handles every request but closes the connection, unanswered, on those whose path holds
    `path_part`: a Hub that goes away half-way through a push."""
    hub = LoopbackHub()
    handler = hub._server.RequestHandlerClass
    answer = handler._json

    def answer_or_drop(self, *args, **kwargs):
        if path_part not in self.path:
            return answer(self, *args, **kwargs)
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True

    handler._json = answer_or_drop
    return hub


def test_pushing_a_model_object_to_a_dead_endpoint(online, closed_endpoint, model_folder):
    model, processor = MakeModel.from_pretrained(model_folder), MakeProcessor.from_pretrained(model_folder)
    with pytest.raises(HubPushError) as error:
        push_to_hub(model, "org/make-shop", processor=processor, endpoint=closed_endpoint)
    message = str(error.value)
    expected = f"Cannot push the MakeModel to 'org/make-shop': the Hugging Face Hub at {closed_endpoint} cannot"
    assert message.startswith(expected)
    assert "Nothing of this upload was committed" in message and "call `push_to_hub` again" in message


def test_a_hub_that_goes_away_before_the_commit_commits_nothing(online, model_folder):
    with _hub_dropping("/preupload/") as hub:
        with pytest.raises(HubPushError) as error:
            push_to_hub(model_folder, "org/make-shop", endpoint=hub.endpoint)
    _assert_one_clear_line(str(error.value), hub.endpoint, model_folder)
    assert "RemoteProtocolError" in str(error.value)
    assert set(hub.repos[("model", "org/make-shop")].resolve("main").files) == {".gitattributes"}  # none of ours


def test_a_lost_answer_to_the_commit_is_not_reported_as_nothing_committed(online, model_folder):
    with _hub_dropping("/commit/") as hub:
        with pytest.raises(HubPushError) as error:
            push_to_hub(model_folder, "org/make-shop", endpoint=hub.endpoint)
    message = str(error.value)
    assert "Nothing of this upload was committed" not in message and hub.endpoint in message
    assert "the repo holds either all of this upload or none of it" in message
    assert "model.safetensors" in hub.repos[("model", "org/make-shop")].resolve("main").files  # it did land


def test_pretrain_push_to_hub_to_a_dead_endpoint(online, closed_endpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hub_constants, "ENDPOINT", closed_endpoint)
    spec = importlib.util.spec_from_file_location("pretrain_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = [f"--{name}={value}" for name, value in TINY.items()]
    output_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        example.main([*argv, f"--output_dir={output_dir}", "--push_to_hub", "--hub_model_id=org/make-shop"])
    assert exit_info.value.code != 0
    message = str(exit_info.value.code)
    assert message.startswith("pretrain: error: Cannot push")
    _assert_one_clear_line(message, closed_endpoint, output_dir)
    assert "Pushed to" not in capsys.readouterr().out
    assert (output_dir / "model.safetensors").is_file()  # the trained model is kept for a later push
