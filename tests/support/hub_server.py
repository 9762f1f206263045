"""A local stand-in for the Hugging Face Hub: the part of its HTTP API that `huggingface_hub` 2.x and `datasets`
use to create a repository, upload to it (preupload, LFS batch + PUT, ndjson commit) and read it back (repo info,
tree listing, paths-info, resolve with ranges).

Repositories live in memory with one snapshot per commit, so reads at a commit sha (as `push_to_hub` does with
its parent commit) see that commit's files. Everything the clients sent is recorded for the tests to assert on.
Run with `HF_ENDPOINT` pointed at it and `HF_HUB_DISABLE_XET=1` (this server speaks plain LFS only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

USER = "tester"
LFS_EXTENSIONS = (".parquet", ".arrow", ".safetensors", ".bin", ".pt", ".png", ".jpg", ".jpeg", ".npy", ".zip")
LFS_MIN_SIZE = 10 * 1024 * 1024
# Repo ids are "namespace/name"; models have no URL prefix, datasets and spaces do.
TYPE_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}


# A subset of the Hub's license ids and task ids: enough to reject a misspelt or made-up value.
LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "bsd-2-clause", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0",
            "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-4.0", "cc-by-3.0", "cc-by-nc-3.0",
            "odbl", "odc-by", "pddl", "gpl-3.0", "lgpl-3.0", "agpl-3.0", "openrail", "other", "unknown"}
TASKS = {"image-segmentation", "image-classification", "object-detection", "depth-estimation", "mask-generation",
         "image-to-image", "image-feature-extraction", "zero-shot-image-classification", "text-classification"}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
SLUG = re.compile(r"^[a-z0-9]+([-.][a-z0-9]+)*$")


def card_metadata(readme: str) -> dict | None:
    """The YAML block at the top of a README.md (None when there is none)."""
    match = re.match(r"^---\r?\n(.*?)\r?\n---\r?\n", readme, re.S)
    return yaml.safe_load(match.group(1)) if match else None


def _model_index_errors(model_index) -> list[str]:
    if not isinstance(model_index, list) or not model_index:
        return ["model-index must be a non-empty list"]
    errors = []
    for model in model_index:
        if not isinstance(model, dict) or not isinstance(model.get("name"), str):
            errors.append("model-index: every entry needs a name")
            continue
        for result in model.get("results") or []:
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if not isinstance(task, dict) or task.get("type") not in TASKS:
                errors.append(f"model-index: task.type must be a Hub task id; got {task}")
            if not isinstance(dataset, dict) or not all(isinstance(dataset.get(k), str) for k in ("type", "name")):
                errors.append(f"model-index: dataset needs string type and name; got {dataset}")
            if not isinstance(metrics, list) or not metrics:
                errors.append("model-index: results need a non-empty metrics list")
                continue
            for metric in metrics:
                if not isinstance(metric.get("type"), str) or not isinstance(metric.get("value"), (int, float)):
                    errors.append(f"model-index: a metric needs a string type and a numeric value; got {metric}")
    return errors


def metadata_errors(readme: str, repo_type: str) -> list[str]:
    """The metadata rules the Hub enforces on commit (a subset: ids, licenses, tasks, model-index shape)."""
    try:
        meta = card_metadata(readme)
    except yaml.YAMLError as err:
        return [f"README.md metadata is not valid YAML: {err}"]
    if meta is None:
        return []
    if not isinstance(meta, dict):
        return ["README.md metadata must be a mapping"]
    errors = []
    licenses = meta.get("license")
    for license_id in licenses if isinstance(licenses, list) else [licenses] if licenses is not None else []:
        if license_id not in LICENSES:
            errors.append(f"license: '{license_id}' is not a Hub license id")
    if licenses == "other" and not SLUG.match(str(meta.get("license_name", ""))):
        errors.append("license: other needs a license_name in lower case with dashes")
    ids = meta.get("base_model", [])
    ids = (ids if isinstance(ids, list) else [ids]) + list(meta.get("datasets") or [])
    errors += [f"'{i}' is not a Hub repository id" for i in ids if not isinstance(i, str) or not REPO_ID.match(i)]
    if repo_type == "model":
        if "pipeline_tag" in meta and meta["pipeline_tag"] not in TASKS:
            errors.append(f"pipeline_tag: '{meta['pipeline_tag']}' is not a Hub task")
        if "model-index" in meta:
            errors += _model_index_errors(meta["model-index"])
    if repo_type == "dataset":
        errors += [f"task_categories: '{t}' is not a Hub task" for t in meta.get("task_categories") or [] if t not in TASKS]
        for config in meta.get("configs") or []:
            if not isinstance(config, dict) or not isinstance(config.get("config_name"), str):
                errors.append(f"configs: every config needs a config_name; got {config}")
    return errors


@dataclass
class Blob:
    """A file in a snapshot: regular content, or a pointer to an uploaded LFS object."""

    content: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """The oid the Hub reports: sha256 for LFS files, the git blob sha1 otherwise."""
        if self.lfs:
            return hashlib.sha256(self.content).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    snapshots: dict[str, dict[str, Blob]] = field(default_factory=dict)
    head: str = ""

    def files(self, revision: str) -> dict[str, Blob] | None:
        return self.snapshots.get(self.head if revision in ("main", "HEAD") else revision)

    def sha(self, revision: str) -> str | None:
        if revision in ("main", "HEAD"):
            return self.head
        return revision if revision in self.snapshots else None


@dataclass
class Commit:
    """One commit as the client sent it."""

    repo_type: str
    repo_id: str
    summary: str
    parent: str | None
    added: dict[str, bytes]  # path → content (LFS files resolved to their uploaded bytes)
    lfs_paths: list[str]
    deleted: list[str]


class HubState:
    """Everything the fake Hub knows and everything it was sent (guarded by one lock)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.commits: list[Commit] = []
        self.created: list[dict] = []
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.authorizations: set[str] = set()
        self.unknown_routes: list[tuple[str, str]] = []
        self.validated: list[tuple[str, str, list[str]]] = []  # (repo type, README text, errors found)
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{self._counter}:{seed}".encode()).hexdigest()

    def repo(self, repo_type: str, repo_id: str) -> Repo | None:
        return self.repos.get((repo_type, repo_id))

    def files(self, repo_type: str, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The content of every file of a repository at a revision (a test helper)."""
        repo = self.repos[(repo_type, repo_id)]
        return {path: blob.content for path, blob in (repo.files(revision) or {}).items()}


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def _entry(path: str, blob: Blob) -> dict:
    entry = {"type": "file", "oid": blob.oid, "size": len(blob.content), "path": path}
    if blob.lfs:
        entry["oid"] = hashlib.sha1(b"lfs pointer " + blob.oid.encode()).hexdigest()
        entry["lfs"] = {"oid": blob.oid, "size": len(blob.content), "pointerSize": 134}
    return entry


def _folder(path: str) -> dict:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def _folders(files: dict[str, Blob]) -> set[str]:
    folders = set()
    for path in files:
        parts = path.split("/")[:-1]
        folders.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    return folders


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    return path.lower().endswith(LFS_EXTENSIONS) or size >= LFS_MIN_SIZE or b"\0" in sample


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HubServer"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet test output
        pass

    # --- plumbing -------------------------------------------------------------------------------------------
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

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _handle(self) -> None:
        url = urlsplit(self.path)
        body = self._body() if self.command in ("POST", "PUT") else b""
        state = self.server.state
        with state.lock:
            state.requests.append((self.command, url.path))
            if self.headers.get("Authorization"):
                state.authorizations.add(self.headers["Authorization"])
        try:
            self._route(url.path, parse_qs(url.query), body)
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json({"error": err.message}, err.status, headers)

    do_GET = do_HEAD = do_POST = do_PUT = _handle

    # --- routing --------------------------------------------------------------------------------------------
    def _route(self, path: str, query: dict, body: bytes) -> None:
        state = self.server.state
        method = self.command
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            return self._validate_yaml(json.loads(body))
        if method == "GET" and path == "/api/whoami-v2":
            return self._json({"type": "user", "name": USER, "orgs": [], "auth": {"type": "access_token"}})
        if method == "PUT" and path.startswith("/lfs-upload/"):
            return self._lfs_put(path.rsplit("/", 1)[1], body)
        match = re.fullmatch(r"/api/(model|dataset|space)s/([^/]+/[^/]+)(?:/(.*))?", path)
        if match:
            repo_type, repo_id, rest = match.group(1), match.group(2), match.group(3) or ""
            return self._api(method, repo_type, repo_id, rest, query, body)
        match = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+?)\.git/info/lfs/objects/batch", path)
        if match and method == "POST":
            return self._lfs_batch(json.loads(body))
        match = re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if match and method in ("GET", "HEAD"):
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(match.group(1) or "", "model")
            return self._resolve(repo_type, match.group(2), unquote(match.group(3)), unquote(match.group(4)))
        with state.lock:
            state.unknown_routes.append((method, path))
        raise HubError(404, f"no route {method} {path}")

    def _api(self, method: str, repo_type: str, repo_id: str, rest: str, query: dict, body: bytes) -> None:
        parts = rest.split("/") if rest else []
        if method == "GET" and not parts:
            return self._info(repo_type, repo_id, "main")
        if method == "GET" and len(parts) == 2 and parts[0] == "revision":
            return self._info(repo_type, repo_id, unquote(parts[1]))
        if method == "POST" and len(parts) == 2 and parts[0] == "preupload":
            return self._preupload(repo_type, repo_id, unquote(parts[1]), json.loads(body))
        if method == "POST" and len(parts) == 2 and parts[0] == "commit":
            return self._commit(repo_type, repo_id, unquote(parts[1]), body, query)
        if method == "GET" and len(parts) >= 2 and parts[0] == "tree":
            in_repo = unquote("/".join(parts[2:]))
            recursive = query.get("recursive", ["False"])[0].lower() == "true"
            return self._tree(repo_type, repo_id, unquote(parts[1]), in_repo, recursive)
        if method == "POST" and len(parts) == 2 and parts[0] == "paths-info":
            form = parse_qs(body.decode())
            return self._paths_info(repo_type, repo_id, unquote(parts[1]), form.get("paths", []))
        with self.server.state.lock:
            self.server.state.unknown_routes.append((method, f"/api/{repo_type}s/{repo_id}/{rest}"))
        raise HubError(404, f"no API route {method} {rest}")

    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.server.state.repo(repo_type, repo_id)
        if repo is None:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def _snapshot(self, repo: Repo, revision: str) -> tuple[str, dict[str, Blob]]:
        sha, files = repo.sha(revision), repo.files(revision)
        if sha is None or files is None:
            raise HubError(404, f"Revision {revision} not found", "RevisionNotFound")
        return sha, files

    def _validate_yaml(self, payload: dict) -> None:
        errors = metadata_errors(payload["content"], payload.get("repoType", "model"))
        with self.server.state.lock:
            self.server.state.validated.append((payload.get("repoType", "model"), payload["content"], errors))
        self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

    # --- write endpoints ------------------------------------------------------------------------------------
    def _create_repo(self, payload: dict) -> None:
        state = self.server.state
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload['name']}"
        with state.lock:
            state.created.append(payload)
            url = f"{self.server.url}/{TYPE_PREFIXES[repo_type]}{repo_id}"
            if (repo_type, repo_id) in state.repos:  # the Hub answers 409 with the repository's url
                message = f"You already created this {repo_type} repo"
                return self._json({"error": message, "url": url}, 409, {"X-Error-Message": message})
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = Repo(repo_type, repo_id, private)
            repo.head = state.new_sha(repo_id)
            repo.snapshots[repo.head] = {}
            state.repos[(repo_type, repo_id)] = repo
        self._json({"url": url, "name": repo_id})

    def _preupload(self, repo_type: str, repo_id: str, revision: str, payload: dict) -> None:
        with self.server.state.lock:
            _, files = self._snapshot(self._repo(repo_type, repo_id), revision)
            answer = []
            for item in payload["files"]:
                path, sample = item["path"], base64.b64decode(item["sample"])
                existing = files.get(path)
                answer.append({"path": path, "uploadMode": "lfs" if _is_lfs(path, item["size"], sample) else "regular",
                               "shouldIgnore": False, "oid": existing.oid if existing else None})
        self._json({"files": answer, "commitOid": None})

    def _lfs_batch(self, payload: dict) -> None:
        objects = []
        with self.server.state.lock:
            known = self.server.state.lfs_objects
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in known:
                    entry["actions"] = {"upload": {"href": f"{self.server.url}/lfs-upload/{obj['oid']}", "header": {}}}
                objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"uploaded content does not hash to {oid}")
        with self.server.state.lock:
            self.server.state.lfs_objects[oid] = body
        self._send(200)

    def _commit(self, repo_type: str, repo_id: str, revision: str, body: bytes, query: dict) -> None:
        if query.get("create_pr"):
            raise HubError(400, "this test server does not create pull requests")
        state = self.server.state
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        with state.lock:
            repo = self._repo(repo_type, repo_id)
            sha, files = self._snapshot(repo, revision)
            parent = header.get("parentCommit")
            if parent is not None and parent != sha:
                raise HubError(412, f"parent commit {parent} is not the head {sha}")
            files = dict(files)
            commit = Commit(repo_type, repo_id, header.get("summary", ""), parent, {}, [], [])
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    content = base64.b64decode(value["content"])
                    files[value["path"]] = Blob(content, lfs=False)
                    commit.added[value["path"]] = content
                elif key == "lfsFile":
                    if value["oid"] not in state.lfs_objects:
                        raise HubError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    content = state.lfs_objects[value["oid"]]
                    files[value["path"]] = Blob(content, lfs=True)
                    commit.added[value["path"]] = content
                    commit.lfs_paths.append(value["path"])
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, f"cannot delete missing file {value['path']}", "EntryNotFound")
                    commit.deleted.append(value["path"])
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    for path in [p for p in files if p.startswith(prefix)]:
                        del files[path]
                        commit.deleted.append(path)
                elif key != "header":
                    raise HubError(400, f"unsupported commit operation {key}")
            new_sha = state.new_sha(repo_id + header.get("summary", ""))
            repo.snapshots[new_sha] = files
            repo.head = new_sha
            state.commits.append(commit)
        url = f"{self.server.url}/{TYPE_PREFIXES[repo_type]}{repo_id}/commit/{new_sha}"
        self._json({"success": True, "commitOid": new_sha, "commitUrl": url, "pullRequestUrl": None})

    # --- read endpoints -------------------------------------------------------------------------------------
    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.server.state.lock:
            repo = self._repo(repo_type, repo_id)
            sha, files = self._snapshot(repo, revision)
            siblings = [{"rfilename": path, "size": len(blob.content)} for path, blob in sorted(files.items())]
        self._json({"id": repo_id, "author": repo_id.split("/")[0], "sha": sha, "private": repo.private,
                    "disabled": False, "gated": False, "tags": [], "siblings": siblings,
                    "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z"})

    def _tree(self, repo_type: str, repo_id: str, revision: str, in_repo: str, recursive: bool) -> None:
        with self.server.state.lock:
            _, files = self._snapshot(self._repo(repo_type, repo_id), revision)
            folders = _folders(files)
            prefix = in_repo.strip("/")
            if prefix and prefix not in folders:
                raise HubError(404, f"{in_repo} is not a folder of {repo_id}", "EntryNotFound")
            start = prefix + "/" if prefix else ""
            entries = []
            for folder in sorted(folders):
                rest = folder[len(start):] if folder.startswith(start) else None
                if rest and (recursive or "/" not in rest):
                    entries.append(_folder(folder))
            for path, blob in sorted(files.items()):
                rest = path[len(start):] if path.startswith(start) else None
                if rest and (recursive or "/" not in rest):
                    entries.append(_entry(path, blob))
        self._json(entries)

    def _paths_info(self, repo_type: str, repo_id: str, revision: str, paths: list[str]) -> None:
        with self.server.state.lock:
            _, files = self._snapshot(self._repo(repo_type, repo_id), revision)
            folders = _folders(files)
            found = [_entry(p, files[p]) if p in files else _folder(p) for p in paths if p in files or p in folders]
        self._json(found)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.server.state.lock:
            sha, files = self._snapshot(self._repo(repo_type, repo_id), revision)
            blob = files.get(path)
        if blob is None:
            raise HubError(404, f"{path} not found in {repo_id}@{revision}", "EntryNotFound")
        headers = {"X-Repo-Commit": sha, "ETag": f'"{blob.oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers.update({"X-Linked-Etag": f'"{blob.oid}"', "X-Linked-Size": str(len(blob.content))})
        content, status = blob.content, 200
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if match and content:
            start = int(match.group(1)) if match.group(1) else max(len(content) - int(match.group(2)), 0)
            end = int(match.group(2)) if match.group(1) and match.group(2) else len(content) - 1
            end = min(end, len(content) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start : end + 1], 206
        self._send(status, content, headers, content_type="application/octet-stream")


class HubServer(ThreadingHTTPServer):
    """`with HubServer() as hub:` serves on 127.0.0.1 (a free port) from a daemon thread."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.state = HubState()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()
