"""Fail in seconds, saying what to do, when a checkpoint has to come from a Hub that cannot be reached.

`from_pretrained("org/make-base")` asks the Hub for each file. When the Hub cannot be reached and nothing is
cached, `huggingface_hub` retries every metadata request with exponential backoff (five retries: about 23 s when
the connection is refused, up to several minutes when packets are dropped, each try waiting up to 60 s) before
`transformers` raises a generic "We couldn't connect" `OSError`. `hub_access` runs before the download: when the repo
is not in the cache it makes one metadata request without retries (`HF_HUB_ETAG_TIMEOUT`, 10 s by default) and, if
no answer comes, raises `HubUnreachableError` naming the repo, the endpoint, the cache and the ways out (a local
folder, `HF_HUB_OFFLINE=1` with a filled cache). A cached repo is loaded as before (the Hub client falls back to the
cache on its own), so the check costs nothing offline and one request on a first download.

`MakeModel.from_pretrained` and `MakeProcessor.from_pretrained` go through it. This file is copied next to the model
code in pushed checkpoints (remote code): it imports only the standard library and `huggingface_hub`, which
`transformers` always installs.
"""

import contextlib
import os
import re
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import build_hf_headers, get_session, validate_repo_id


class HubUnreachableError(OSError):
    """The Hub cannot be reached (or offline mode is on) and the requested repo is not in the local cache."""


# Exception class names (anywhere in a cause chain) that mean "no answer from the Hub", for the HTTP clients
# huggingface_hub has used (requests, httpx, httpx2).
_NETWORK_ERROR_NAMES = {
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "ProxyError",
    "ReadTimeout",
    "Timeout",
    "TimeoutException",
    "NetworkError",
    "OfflineModeIsEnabled",
}
_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


def _is_repo_id(name) -> bool:
    if not isinstance(name, str) or os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:  # not a repo id: transformers reports the missing path itself
        return False
    return True


def _is_network_failure(error: BaseException) -> bool:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        names = {cls.__name__ for cls in type(error).__mro__}
        if names & _NETWORK_ERROR_NAMES or isinstance(error, (ConnectionError, TimeoutError)):
            return True
        error = error.__cause__ or error.__context__
    return False


def is_cached(repo_id: str, revision: str | None = None, cache_dir=None, repo_type: str = "model") -> bool:
    """Whether a snapshot of `repo_id` at `revision` (branch, tag or commit) is in the Hub cache."""
    cache = Path(cache_dir or hub_constants.HF_HUB_CACHE)
    repo_folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    revision = revision or hub_constants.DEFAULT_REVISION
    commit = revision
    if not _COMMIT_HASH.match(revision):
        ref = repo_folder / "refs" / revision
        if not ref.is_file():
            return False
        commit = ref.read_text().strip()
    snapshot = repo_folder / "snapshots" / commit
    return snapshot.is_dir() and any(snapshot.iterdir())


def _unreachable_message(repo_id: str, revision: str, cache_dir, reason: str) -> str:
    cache = cache_dir or hub_constants.HF_HUB_CACHE
    return (
        f"Cannot load {repo_id!r} (revision {revision!r}): the Hugging Face Hub at {hub_constants.ENDPOINT} cannot "
        f"be reached ({reason}) and {repo_id!r} is not in the local cache {cache}. Either connect to the Hub (check "
        "the network, proxy settings and HF_ENDPOINT), or pass the path of a local folder written by "
        "`save_pretrained` instead of the repo id, or download the repo once where the Hub is reachable "
        f"(`hf download {repo_id}`) into this cache and then set HF_HUB_OFFLINE=1 to load it without any network "
        "request."
    )


def _offline_message(repo_id: str, revision: str, cache_dir) -> str:
    cache = cache_dir or hub_constants.HF_HUB_CACHE
    return (
        f"Cannot load {repo_id!r} (revision {revision!r}): offline mode is on (HF_HUB_OFFLINE=1 or "
        f"local_files_only=True) and {repo_id!r} is not in the local cache {cache}. Download it once with the Hub "
        "reachable (unset HF_HUB_OFFLINE), point HF_HOME / cache_dir at a cache that holds it, or pass the path "
        "of a local folder written by `save_pretrained` instead of the repo id."
    )


def check_hub_access(
    pretrained_model_name_or_path,
    *,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    token=None,
) -> None:
    """Raise `HubUnreachableError` at once if `pretrained_model_name_or_path` is a repo id that is not cached and
    cannot be fetched (offline mode, or no answer to one metadata request). Local paths and cached repos pass."""
    if not _is_repo_id(pretrained_model_name_or_path):
        return
    repo_id, revision = pretrained_model_name_or_path, revision or hub_constants.DEFAULT_REVISION
    if is_cached(repo_id, revision, cache_dir):
        return
    if local_files_only or hub_constants.is_offline_mode():
        raise HubUnreachableError(_offline_message(repo_id, revision, cache_dir))
    url = hf_hub_url(repo_id, "config.json", revision=revision, endpoint=hub_constants.ENDPOINT)
    try:
        get_session().head(
            url,
            headers=build_hf_headers(token=token),
            timeout=hub_constants.HF_HUB_ETAG_TIMEOUT,
        )
    except Exception as error:
        if _is_network_failure(error):
            raise HubUnreachableError(
                _unreachable_message(repo_id, revision, cache_dir, f"{type(error).__name__}: {error}")
            ) from error
        raise
    # Any HTTP answer, even an error (missing repo, gated, ...), means the Hub is there: transformers reports it.


@contextlib.contextmanager
def hub_access(pretrained_model_name_or_path, kwargs: dict):
    """Wrap a `from_pretrained` call: check reachability first (see `check_hub_access`), and turn a network
    failure that still happens during the load (e.g. the connection drops half-way) into `HubUnreachableError`."""
    revision = kwargs.get("revision")
    cache_dir = kwargs.get("cache_dir")
    check_hub_access(
        pretrained_model_name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=bool(kwargs.get("local_files_only", False)),
        token=kwargs.get("token"),
    )
    try:
        yield
    except HubUnreachableError:
        raise
    except OSError as error:
        if not (_is_repo_id(pretrained_model_name_or_path) and _is_network_failure(error)):
            raise
        if kwargs.get("local_files_only") or hub_constants.is_offline_mode():
            raise HubUnreachableError(
                _offline_message(pretrained_model_name_or_path, revision or hub_constants.DEFAULT_REVISION, cache_dir)
            ) from error
        raise HubUnreachableError(
            _unreachable_message(
                pretrained_model_name_or_path,
                revision or hub_constants.DEFAULT_REVISION,
                cache_dir,
                f"{type(error).__name__}: {str(error).splitlines()[0]}",
            )
        ) from error


__all__ = ["HubUnreachableError", "check_hub_access", "hub_access", "is_cached"]
