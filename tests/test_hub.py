"""The Hub round trip over real HTTP on 127.0.0.1: push a trained tiny MAKE model as `org/make-base` to a loopback
Hub, load it back in fresh processes (online, offline from the cache, and without make_hf through remote code) and
get exactly the pushed model's outputs; plus the fast, actionable error when the Hub cannot be reached."""

import fnmatch
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hub_constants
from PIL import Image

from hub_server import LoopbackHub
from hub_worker import REPO_ID, embed
from make_hf import MakeConfig, MakeModel, MakeProcessor, train_tokenizer
from make_hf.cli import main as cli_main
from make_hf.hub import MODEL_REPO_FILES, files_to_upload, push_to_hub, remote_code_additions
from make_hf.hub_access import HubUnreachableError, hub_access, is_cached
from make_hf.training import PretrainArguments, pretrain
from test_pretrain import TINY

TESTS = Path(__file__).resolve().parent

TITLES = [
    "red running shoes breathable mesh sport sneakers men",
    "usb c charger 65w fast charging gan adapter",
    "blue cotton t shirt men summer short sleeve",
    "wooden desk lamp warm light reading",
]
QUERIES = ["red sneakers", "fast charger", "blue tee", "desk lamp"]
EVALUATION = {"title+image": {"recall@1": 0.75, "recall@10": 1.0, "mrr@10": 0.83, "ndcg@10": 0.87}}


def _write_images(folder: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(len(TITLES)):
        path = folder / f"product_{index}.png"  # PNG: the child processes read the very same pixels
        Image.fromarray(rng.integers(0, 256, size=(40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def hub():
    """The loopback Hub; offline mode (set for every test) is lifted in this process while it runs, so that
    pushes reach it. Nothing else is served: any other host stays unreachable."""
    with LoopbackHub() as server, pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
        yield server


@pytest.fixture(scope="module")
def pushed(hub, tmp_path_factory):
    """A make-tiny model trained for a few steps, pushed with its processor as org/make-base; its outputs."""
    work = tmp_path_factory.mktemp("pushed")
    images = _write_images(work)
    inputs = {
        "queries": QUERIES,
        "titles": TITLES[:2] + [None, TITLES[3]],  # a product without a title: image only
        "images": images[:3] + [None],  # a product without an image: title only
        "train_titles": TITLES,
        "train_images": images,
    }
    inputs_path = work / "inputs.json"
    inputs_path.write_text(json.dumps(inputs))

    torch.manual_seed(0)
    config = MakeConfig.from_preset("make-tiny")
    tokenizer = train_tokenizer(TITLES + QUERIES, vocab_size=config.query_config.vocab_size, min_frequency=1)
    processor = MakeProcessor.from_config(config, tokenizer).fit_keywords(TITLES, QUERIES)
    model = MakeModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = processor(query=QUERIES, title=TITLES, images=images)
    for _ in range(3):
        model(**batch, return_loss=True).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()

    commit = push_to_hub(
        model, REPO_ID, processor=processor, evaluation=EVALUATION, card_kwargs={"preset": "make-base"},
        endpoint=hub.endpoint,
    )
    return {"inputs": str(inputs_path), "expected": embed(model, processor, inputs), "commit": commit, "work": work}


def _run_worker(mode: str, pushed, hf_home: Path, endpoint: str, offline: bool) -> dict:
    output = pushed["work"] / f"{mode}.pt"
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "MAKE_TEST_THREADS": str(torch.get_num_threads()),
    }
    env.pop("TRANSFORMERS_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, str(TESTS / "hub_worker.py"), mode, pushed["inputs"], str(output)],
        env=env, cwd=pushed["work"], capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"worker {mode} failed:\n{result.stdout}\n{result.stderr[-6000:]}"
    return torch.load(output, weights_only=False)


def _assert_identical(actual: dict, expected: dict):
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), f"{key} differs from the pushed model's"


def test_push_then_load_online_offline_and_as_remote_code(hub, pushed, tmp_path):
    files = hub.files(REPO_ID)
    for name in ("README.md", "config.json", "model.safetensors", "processor_config.json", "tokenizer_config.json",
                 "configuration_make.py", "modeling_make.py", "processing_make.py", "hub_access.py"):
        assert name in files, f"{name} was not pushed"
    assert json.loads(files["config.json"])["auto_map"]["AutoModel"] == "modeling_make.MakeModel"
    assert pushed["commit"].oid == hub.repos[("model", REPO_ID)].branches["main"]
    card = ModelCard(files["README.md"].decode())
    assert {(r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}[
        ("title+image", "recall@1")
    ] == 0.75

    hf_home = tmp_path / "hf_home"
    online = _run_worker("make_hf", pushed, hf_home, hub.endpoint, offline=False)
    _assert_identical(online["results"]["make"], pushed["expected"])
    _assert_identical(online["results"]["auto"], pushed["expected"])
    assert online["info"]["auto_classes"] == ["make_hf.modeling_make", "make_hf.processing_make"]
    assert is_cached(REPO_ID, cache_dir=hf_home / "hub")

    requests_before = len(hub.requests)
    offline = _run_worker("offline", pushed, hf_home, hub.endpoint, offline=True)
    _assert_identical(offline["results"]["make"], pushed["expected"])
    assert hub.requests[requests_before:] == [], "the offline load touched the network"

    # Online but the Hub gone: the cached copy loads at once instead of retrying the Hub for a minute.
    with pytest.MonkeyPatch.context() as patch:
        _unreachable_hub(patch)
        model = MakeModel.from_pretrained(REPO_ID, cache_dir=hf_home / "hub").eval()
        processor = MakeProcessor.from_pretrained(REPO_ID, cache_dir=hf_home / "hub")
    _assert_identical(embed(model, processor, json.loads(Path(pushed["inputs"]).read_text())), pushed["expected"])

    remote = _run_worker("remote_code", pushed, hf_home, hub.endpoint, offline=False)
    _assert_identical(remote["results"]["auto"], pushed["expected"])
    assert remote["info"]["make_hf_importable"] is False and remote["info"]["make_hf_loaded"] == []
    assert all(module.startswith("transformers_modules.") for module in remote["info"]["auto_classes"])


def test_push_a_folder_from_the_command_line(hub, tmp_path, capsys):
    folder = tmp_path / "run"
    MakeModel(MakeConfig.from_preset("make-tiny")).save_pretrained(folder)
    (folder / "eval.json").write_text(json.dumps(EVALUATION))
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")

    status = cli_main([
        "push", str(folder), "org/make-small", "--evaluation", str(folder / "eval.json"), "--preset", "make-small",
        "--endpoint", hub.endpoint,
    ])
    assert status == 0
    assert capsys.readouterr().out.strip().startswith(f"{hub.endpoint}/org/make-small/commit/")
    files = hub.files("org/make-small")
    # eval.json is what the card is generated from, not a file of a model repository.
    assert ".git/HEAD" not in files and "eval.json" not in files and "model.safetensors" in files
    card = ModelCard(files["README.md"].decode())  # generated: the folder had none
    assert card.data.model_name == "org/make-small"
    assert card.data.eval_results[0].metric_value == 0.75
    assert "`make-small` is the built-in default" in card.text


def test_a_training_output_is_pushed_by_allow_list(hub, tmp_path, capsys):
    """A real training output (checkpoints, image feature cache, history) pushed by `pretrain(--push_to_hub)` and by
    `make-hf push`: only the model repository's files reach the Hub, and the pushed repo loads."""
    run = tmp_path / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "ENDPOINT", hub.endpoint)  # where pretrain's push goes
        pretrain(PretrainArguments(
            output_dir=str(run), **{**TINY, "max_train_steps": 2}, checkpointing_steps=1, lock_image_tower=True,
            push_to_hub=True, hub_model_id="org/make-run",
        ))
    assert (run / "checkpoints" / "checkpoint-2" / "optimizer.bin").is_file()  # there was something to leak
    assert any((run / "image_features").rglob("*")) and (run / "training_history.json").is_file()
    # Files of a kind nobody listed: never published, because only listed kinds are.
    (run / ".env").write_text("HF_TOKEN=hf_secret\n")
    (run / "notes.txt").write_text("local notes\n")
    (run / "image_features" / "extra.safetensors").write_bytes(b"cache")
    (run / "logs").mkdir()
    (run / "logs" / "README.md").write_text("a sub-folder's file matching an allowed name\n")

    capsys.readouterr()
    assert cli_main(["push", str(run), "org/make-run-cli", "--endpoint", hub.endpoint]) == 0
    left_out_message = capsys.readouterr().err
    assert "checkpoints/, evaluation_sets/, image_features/, logs/" in left_out_message
    assert "training_history.json" in left_out_message

    local = {path.relative_to(run).as_posix() for path in run.rglob("*") if path.is_file()}
    for repo_id in ("org/make-run", "org/make-run-cli"):
        files = set(hub.files(repo_id)) - {".gitattributes"}  # the Hub seeds every repo with .gitattributes
        assert not [name for name in files if "/" in name], f"{repo_id}: a sub-folder was uploaded"
        assert "training_history.json" not in files and ".env" not in files and "notes.txt" not in files
        assert all(
            any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_REPO_FILES) or name.endswith(".py")
            for name in files
        ), f"{repo_id}: {sorted(files)}"
        assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "README.md",
                "eval_results.json", "eval_results.md", "loss_curves.png", "modeling_make.py"} <= files
        assert files <= local
    assert set(hub.files("org/make-run-cli")) - {".gitattributes"} == set(files_to_upload(run)[0])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hub_constants, "ENDPOINT", hub.endpoint)
        # Computed from HF_ENDPOINT at import: downloads go to the loopback Hub only with both patched.
        template = hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
        patch.setattr(hub_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
        model = MakeModel.from_pretrained("org/make-run-cli", cache_dir=tmp_path / "cache")
        processor = MakeProcessor.from_pretrained("org/make-run-cli", cache_dir=tmp_path / "cache")
    expected = MakeModel.from_pretrained(run).state_dict()
    assert all(torch.equal(value, expected[name]) for name, value in model.state_dict().items())
    assert processor.keyword_extractor.is_fitted


def test_files_to_upload_is_an_allow_list(tmp_path):
    for name in ("config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "vocab.txt",
                 "modeling_make.py", "plot.png", "optimizer.bin", "training_history.json", "id_rsa", "run.py",
                 "checkpoints/checkpoint-1/config.json", "image_features/ab/cd.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    uploaded, left_out = files_to_upload(tmp_path, ignore_patterns=["*.png"])
    assert uploaded == ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json",
                        "modeling_make.py", "vocab.txt"]
    assert left_out == ["checkpoints/", "id_rsa", "image_features/", "optimizer.bin", "plot.png", "run.py",
                        "training_history.json"]


def test_push_adds_missing_remote_code(tmp_path):
    model = MakeModel(MakeConfig.from_preset("make-tiny"))
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["auto_map"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "modeling_make.py").unlink()
    (tmp_path / "hub_access.py").unlink()

    additions = remote_code_additions(tmp_path)
    assert json.loads(additions["config.json"])["auto_map"] == {
        "AutoConfig": "configuration_make.MakeConfig", "AutoModel": "modeling_make.MakeModel",
    }
    assert "modeling_make.py" in additions and "hub_access.py" in additions
    assert "configuration_make.py" not in additions  # already there
    assert not (tmp_path / "modeling_make.py").exists()  # the folder itself is left alone


def test_push_rejects_a_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="holds no config.json"):
        push_to_hub(tmp_path, "org/nothing", endpoint="http://127.0.0.1:9")


def _unreachable_hub(patch: pytest.MonkeyPatch) -> str:
    """Point this process at a closed loopback port, online, and fail on any retry backoff of the Hub client."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed once the socket is: connections refused
    patch.setattr(hub_constants, "ENDPOINT", endpoint)
    patch.setattr(hub_constants, "HF_HUB_OFFLINE", False)

    def no_retries(seconds):
        raise AssertionError(f"retried the Hub with a {seconds} s backoff")

    patch.setattr("huggingface_hub.utils._http.time.sleep", no_retries)
    return endpoint


def test_unreachable_hub_and_empty_cache_fail_at_once(monkeypatch, tmp_path):
    endpoint = _unreachable_hub(monkeypatch)
    for load in (MakeModel.from_pretrained, MakeProcessor.from_pretrained):
        with pytest.raises(HubUnreachableError) as error:
            load(REPO_ID, cache_dir=tmp_path)
        message = str(error.value)
        assert isinstance(error.value, OSError)
        assert "'org/make-base'" in message and endpoint in message and str(tmp_path) in message
        assert "HF_HUB_OFFLINE=1" in message and "local folder" in message


def test_offline_mode_and_empty_cache_fail_at_once(monkeypatch, tmp_path):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match="offline mode is on .* 'org/make-base' is not in the local cache"):
        MakeModel.from_pretrained(REPO_ID, cache_dir=tmp_path)


def test_network_failure_during_a_load_is_translated(tmp_path):
    cached = tmp_path / "models--org--make-base"
    (cached / "refs").mkdir(parents=True)
    (cached / "refs" / "main").write_text("a" * 40)
    (cached / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (cached / "snapshots" / ("a" * 40) / "config.json").write_text("{}")
    assert is_cached(REPO_ID, cache_dir=tmp_path)
    with pytest.raises(HubUnreachableError, match="'org/make-base'") as error:
        with hub_access(REPO_ID, {"cache_dir": tmp_path}):  # cached: no probe, the load itself fails
            try:
                raise ConnectionRefusedError(111, "Connection refused")
            except ConnectionRefusedError as cause:
                raise OSError("We couldn't connect to the Hub") from cause
    assert isinstance(error.value.__cause__, OSError)
    with pytest.raises(OSError, match="not a valid JSON") as error:  # other errors pass through unchanged
        with hub_access(REPO_ID, {"cache_dir": tmp_path}):
            raise OSError("config.json is not a valid JSON file")
    assert not isinstance(error.value, HubUnreachableError)
