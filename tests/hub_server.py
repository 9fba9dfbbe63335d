"""A loopback Hugging Face Hub for end-to-end tests: upload, then download, over real HTTP.

It speaks just enough of the Hub's HTTP API for `huggingface_hub` (2.x) and `transformers` to push a model folder
and load it back, with `HF_ENDPOINT` pointing at it:

- upload: `POST /api/repos/create`, `POST /api/validate-yaml`, `POST /api/{type}s/{repo}/preupload/{rev}` (every file
  is answered `uploadMode: "regular"`, so no LFS or Xet storage is involved) and
  `POST /api/{type}s/{repo}/commit/{rev}` (an NDJSON stream: a header line, then `file` lines with base64
  content, `deletedFile` / `deletedFolder` lines);
- metadata: `GET /api/{type}s/{repo}` and `.../revision/{rev}` (repo info with `sha` and `siblings`),
  `GET .../tree/{rev}[/{path}]` (file listing);
- download: `HEAD` / `GET /[{type}s/]{repo}/resolve/{rev}/{path}` with the headers `huggingface_hub` relies on to
  fill its cache: `X-Repo-Commit` (the resolved commit), `ETag` (the file's git blob id), `Content-Length`; a
  missing file is a 404 with `X-Error-Code: EntryNotFound` and the commit, so that the client caches the absence.

State lives in memory; commits are immutable snapshots, branches point at them, and a revision is a branch name or
a full commit id. Every request is recorded in `hub.requests` as `(method, path)` so a test can assert what
travelled. Start it on a free port of 127.0.0.1 with `with LoopbackHub() as hub: ...` (`hub.endpoint` is the URL), or
from a shell with `python tests/hub_server.py` to try the client by hand.
"""

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_id(content: bytes) -> str:
    """The git object id of a file's content: what the Hub returns as a regular file's `oid` and `ETag`."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


# The Hub seeds every new repo with a commit holding this file.
INITIAL_GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
)


@dataclass
class Commit:
    oid: str
    message: str
    files: dict  # path -> bytes
    parent: str | None
    created_at: str


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: dict = field(default_factory=dict)  # oid -> Commit
    branches: dict = field(default_factory=dict)  # name -> oid

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision, revision)
        return self.commits.get(oid)


class HubError(Exception):
    """An error answer: HTTP status, the Hub's `X-Error-Code`, a message, and extra headers."""

    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None, body=None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        self.body = {"error": message, **(body or {})}


_API_REPO = re.compile(
    r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(preupload|commit|revision|tree)/([^/]+)(/.*)?)?$"
)
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class LoopbackHub:
    """An in-memory Hub served by `http.server` in a background thread on `127.0.0.1` (port 0: the OS picks one)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._counter = 0
        self._server = ThreadingHTTPServer((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LoopbackHub":
        self._thread = threading.Thread(target=self._server.serve_forever, name="loopback-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "LoopbackHub":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ state

    def _new_commit(self, repo: Repo, files: dict, message: str, parent: str | None) -> Commit:
        self._counter += 1
        seed = json.dumps([parent, message, self._counter, sorted((p, git_blob_id(c)) for p, c in files.items())])
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            message=message,
            files=files,
            parent=parent,
            created_at=time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        )
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                # The Hub's conflict answer still carries the repo URL, which `create_repo(exist_ok=True)` returns.
                raise HubError(
                    409, None, f"You already created this {repo_type} repo",
                    body={"url": self.repo_url(repo_id, repo_type)},
                )
            repo = Repo(repo_id=repo_id, repo_type=repo_type, private=private)
            first = self._new_commit(repo, {".gitattributes": INITIAL_GITATTRIBUTES}, "initial commit", None)
            repo.branches["main"] = first.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def repo_url(self, repo_id: str, repo_type: str = "model") -> str:
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        return f"{self.endpoint}/{prefix}{repo_id}"

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository {repo_id!r} not found")
        return repo

    def commit_of(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict:
        """The files (path -> bytes) of `repo_id` at `revision`, for assertions."""
        repo = self.repo(repo_id, repo_type)
        return dict(self.commit_of(repo, revision).files)

    def apply_commit(self, repo: Repo, revision: str, lines: list[dict]) -> Commit:
        """Apply a parsed NDJSON commit payload on top of branch `revision` (created if missing)."""
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, None, "The first line of a commit must be its header")
        header = lines[0]["value"]
        with self._lock:
            if revision in repo.branches:
                head = repo.commits[repo.branches[revision]]
            elif "main" in repo.branches and re.fullmatch(r"[0-9a-f]{40}", revision) is None:
                head = repo.commits[repo.branches["main"]]
            else:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and parent_commit != head.oid:
                raise HubError(412, None, f"Parent commit {parent_commit} is not the head of {revision}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, None, f"Unsupported encoding for {value.get('path')!r}")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    if value["path"] not in files:
                        raise HubError(404, "EntryNotFound", "A file with this name doesn't exist")
                    del files[value["path"]]
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {path: content for path, content in files.items() if not path.startswith(prefix)}
                else:
                    # `lfsFile` lines cannot happen: preupload answers "regular" for every file.
                    raise HubError(400, None, f"Unsupported commit operation {key!r}")
            commit = self._new_commit(repo, files, header.get("summary", ""), head.oid)
            repo.branches[revision] = commit.oid
            return commit


def _make_handler(hub: LoopbackHub):
    class Handler(BaseHTTPRequestHandler):
        # Keep-alive as the client expects; every answer therefore carries a Content-Length.
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # silence the per-request stderr lines
            pass

        # ------------------------------------------------------------ plumbing

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None):
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            # For HEAD too: the length of the body a GET would send (huggingface_hub reads the file size from it).
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, payload, headers: dict | None = None):
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

        def _dispatch(self):
            url = urlsplit(self.path)
            hub.requests.append((self.command, url.path))
            body = self._body() if self.command in ("POST", "PUT") else b""
            try:
                self._route(url.path, parse_qs(url.query), body)
            except HubError as error:
                headers = {"X-Error-Message": error.message, **error.headers}
                if error.code is not None:
                    headers["X-Error-Code"] = error.code
                self._json(error.status, error.body, headers)

        do_GET = do_HEAD = do_POST = do_PUT = _dispatch

        # ------------------------------------------------------------ routes

        def _route(self, path: str, query: dict, body: bytes):
            if self.command == "POST" and path == "/api/repos/create":
                return self._create_repo(json.loads(body or b"{}"))
            if self.command == "GET" and path == "/api/agent-harnesses":
                # Asked once per process by the client's user-agent builder; an empty registry detects nothing.
                return self._json(200, {"standardEnvVars": [], "harnesses": {}})
            if self.command == "POST" and path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body or b"{}"))
            match = _API_REPO.match(path)
            if match is not None:
                plural, repo_id, action, revision, rest = match.groups()
                repo = hub.repo(repo_id, plural[:-1])
                revision = unquote(revision) if revision else "main"
                if action == "preupload" and self.command == "POST":
                    return self._preupload(repo, revision, json.loads(body))
                if action == "commit" and self.command == "POST":
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    commit = hub.apply_commit(repo, revision, lines)
                    return self._json(200, {
                        "commitUrl": f"{hub.repo_url(repo.repo_id, repo.repo_type)}/commit/{commit.oid}",
                        "commitOid": commit.oid,
                        "pullRequestUrl": None,
                    })
                if action in (None, "revision") and self.command == "GET":
                    return self._repo_info(repo, revision)
                if action == "tree" and self.command == "GET":
                    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                    return self._tree(repo, revision, unquote((rest or "").strip("/")), recursive)
            match = _RESOLVE.match(path)
            if match is not None and self.command in ("GET", "HEAD"):
                type_prefix, repo_id, revision, filename = match.groups()
                repo = hub.repo(repo_id, (type_prefix or "models")[:-1])
                return self._resolve(repo, unquote(revision), unquote(filename))
            raise HubError(404, None, f"The loopback hub does not serve {self.command} {path}")

        def _create_repo(self, payload: dict):
            repo_type = payload.get("type") or "model"
            repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            hub.create_repo(repo_id, repo_type, private)
            self._json(200, {"url": hub.repo_url(repo_id, repo_type), "name": repo_id})

        def _validate_yaml(self, payload: dict):
            # Like the Hub: the README's front matter must be a YAML mapping, and a model-index must be well formed.
            content = payload.get("content", "")
            match = re.match(r"^---\s*\n(.*?)\n---\s*\n", content, re.DOTALL)
            errors = []
            if match is not None:
                try:
                    metadata = yaml.safe_load(match.group(1))
                except yaml.YAMLError as error:
                    metadata, errors = None, [{"message": f"Invalid YAML: {error}"}]
                if not errors and not isinstance(metadata, dict):
                    errors = [{"message": "The metadata must be a YAML mapping"}]
                elif not errors and "model-index" in metadata:
                    from huggingface_hub.repocard_data import model_index_to_eval_results

                    try:
                        model_index_to_eval_results(metadata["model-index"])
                    except (KeyError, TypeError, ValueError) as error:
                        errors = [{"message": f"Invalid model-index: {error!r}"}]
            self._json(400 if errors else 200, {"errors": errors, "warnings": []})

        def _preupload(self, repo: Repo, revision: str, payload: dict):
            head = repo.resolve(revision) or repo.resolve("main")
            files = []
            for entry in payload.get("files", []):
                existing = head.files.get(entry["path"]) if head is not None else None
                files.append({
                    "path": entry["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": git_blob_id(existing) if existing is not None else None,
                })
            self._json(200, {"files": files, "commitOid": head.oid if head is not None else None})

        def _repo_info(self, repo: Repo, revision: str):
            commit = hub.commit_of(repo, revision)
            self._json(200, {
                "id": repo.repo_id,
                "_id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "tags": [],
                "siblings": [
                    {"rfilename": path, "size": len(content), "blobId": git_blob_id(content)}
                    for path, content in sorted(commit.files.items())
                ],
            })

        def _tree(self, repo: Repo, revision: str, folder: str, recursive: bool):
            commit = hub.commit_of(repo, revision)
            prefix = folder + "/" if folder else ""
            entries, directories = [], set()
            for path, content in sorted(commit.files.items()):
                if not path.startswith(prefix):
                    continue
                relative = path[len(prefix):]
                parts = relative.split("/")
                for depth in range(1, len(parts)):
                    directory = prefix + "/".join(parts[:depth])
                    if (recursive or depth == 1) and directory not in directories:
                        directories.add(directory)
                        entries.append({"type": "directory", "oid": git_blob_id(directory.encode()), "size": 0,
                                        "path": directory})
                if recursive or len(parts) == 1:
                    entries.append({"type": "file", "oid": git_blob_id(content), "size": len(content), "path": path})
            if folder and not entries:
                raise HubError(404, "EntryNotFound", f"{folder} does not exist on {revision}",
                               {"X-Repo-Commit": commit.oid})
            self._json(200, entries)

        def _resolve(self, repo: Repo, revision: str, filename: str):
            commit = hub.commit_of(repo, revision)
            content = commit.files.get(filename)
            if content is None:
                raise HubError(404, "EntryNotFound", f"{filename} does not exist on {revision}",
                               {"X-Repo-Commit": commit.oid})
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{git_blob_id(content)}"',
                "X-Repo-Commit": commit.oid,
                "Accept-Ranges": "bytes",
            }
            byte_range = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
            if byte_range is None:
                return self._send(200, content, headers)
            start = int(byte_range.group(1))
            end = int(byte_range.group(2)) if byte_range.group(2) else len(content) - 1
            if start >= len(content):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(content)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            self._send(206, content[start:end + 1], headers)

    return Handler


__all__ = ["LoopbackHub", "git_blob_id"]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Serve an in-memory Hub on loopback until interrupted.")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with LoopbackHub(port=args.port) as hub:
        print(f"HF_ENDPOINT={hub.endpoint}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
