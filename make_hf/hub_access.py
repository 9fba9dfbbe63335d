"""Fail in seconds, saying what to do, when a checkpoint has to come from a Hub that cannot be reached.

`from_pretrained("org/make-base")` asks the Hub for each file. When the Hub cannot be reached, `huggingface_hub`
retries metadata requests with exponential backoff (five retries: about 23 s when the connection is refused, up to
several minutes when packets are dropped, each try waiting up to 60 s). With nothing cached, `transformers` then
raises a generic "We couldn't connect" `OSError`; with the repo cached, a processor still spends over a minute
retrying its optional files and listings before it falls back to the cache.

`hub_access` runs before the load and makes one metadata request without retries (`HF_HUB_ETAG_TIMEOUT`, 10 s by
default). No answer and nothing cached: `HubUnreachableError` at once, naming the repo, the endpoint, the cache and
the ways out (a local folder, `HF_HUB_OFFLINE=1` with a filled cache). No answer but the repo cached: the load goes
on with `local_files_only=True` (and a warning). In offline mode nothing is requested; an uncached repo fails at
once with the same kind of message.

`MakeModel.from_pretrained` and `MakeProcessor.from_pretrained` go through it. This file is copied next to the model
code in pushed checkpoints (remote code): it imports only the standard library and `huggingface_hub`, which
`transformers` always installs.
"""

import contextlib
import logging
import os
import re
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import hf_hub_url
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import build_hf_headers, get_session, validate_repo_id


logger = logging.getLogger(__name__)


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
    "RemoteProtocolError",  # httpx: the server closed the connection without answering (it went away mid-request)
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


def _probe(repo_id: str, revision: str, token) -> Exception | None:
    """One metadata request to the Hub, without retries: None when any HTTP answer comes back (even an error such
    as a missing or gated repo, which transformers then reports), the network error otherwise."""
    url = hf_hub_url(repo_id, "config.json", revision=revision, endpoint=hub_constants.ENDPOINT)
    try:
        get_session().head(url, headers=build_hf_headers(token=token), timeout=hub_constants.HF_HUB_ETAG_TIMEOUT)
    except Exception as error:
        if _is_network_failure(error):
            return error
        raise
    return None


def check_hub_access(
    pretrained_model_name_or_path,
    *,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    token=None,
) -> bool:
    """Decide how a `from_pretrained(pretrained_model_name_or_path)` can proceed, before it touches the network.

    Returns:
        True when the load must use the cache only (`local_files_only=True`): the repo is cached but the Hub does
        not answer. Without it, `transformers` still asks the Hub for optional files and listings and the client
        retries each with backoff: over a minute for a processor. False: proceed as asked (a local path, offline
        mode with a cached repo, or a Hub that answers).

    Raises:
        HubUnreachableError: the repo is not cached and offline mode is on, or the Hub does not answer.
    """
    if not _is_repo_id(pretrained_model_name_or_path):
        return False
    repo_id, revision = pretrained_model_name_or_path, revision or hub_constants.DEFAULT_REVISION
    cached = is_cached(repo_id, revision, cache_dir)
    if local_files_only or hub_constants.is_offline_mode():
        if cached:
            return False
        raise HubUnreachableError(_offline_message(repo_id, revision, cache_dir))
    error = _probe(repo_id, revision, token)
    if error is None:
        return False
    if cached:
        logger.warning(
            f"The Hub at {hub_constants.ENDPOINT} cannot be reached ({type(error).__name__}); loading {repo_id!r} "
            "from the local cache. Set HF_HUB_OFFLINE=1 to skip this check."
        )
        return True
    raise HubUnreachableError(
        _unreachable_message(repo_id, revision, cache_dir, f"{type(error).__name__}: {error}")
    ) from error


@contextlib.contextmanager
def hub_access(pretrained_model_name_or_path, kwargs: dict):
    """Wrap a `from_pretrained(pretrained_model_name_or_path, **kwargs)` call: check reachability first (see
    `check_hub_access`; `kwargs` gets `local_files_only=True` when a cached repo must be loaded without the Hub, so
    pass the same dict on), and turn a network failure that still happens during the load (e.g. the connection
    drops half-way) into `HubUnreachableError`."""
    revision = kwargs.get("revision")
    cache_dir = kwargs.get("cache_dir")
    cache_only = check_hub_access(
        pretrained_model_name_or_path,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=bool(kwargs.get("local_files_only", False)),
        token=kwargs.get("token"),
    )
    if cache_only:
        kwargs["local_files_only"] = True
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
