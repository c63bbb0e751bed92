"""A tiny Hugging Face Hub stand-in on localhost, enough for hf_hub_download and model_info/snapshot_download.

Serves HEAD/GET /{repo}/resolve/{rev}/{file} (ETag, X-Repo-Commit, Content-Length, Range) and
GET /api/models/{repo}[/revision/{rev}]. Faults can be injected per file: cut a body short, corrupt it,
or answer with an HTTP status. Every request is logged for assertions.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+?)(?:/revision/(?P<rev>[^/]+))?$")


@dataclass
class FakeRepo:
    """Files of one repo; `lfs` files get a SHA-256 etag like real LFS files, others a git-style sha1."""

    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)
    gated: bool = False

    @property
    def commit(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + hashlib.sha256(self.files[name]).digest())
        return digest.hexdigest()

    def etag(self, name: str) -> str:
        data = self.files[name]
        if name in self.lfs:
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Faults:
    """Per-file fault queues, consumed one GET at a time."""

    truncate: dict[str, list[int]] = field(default_factory=dict)  # send only N bytes, then drop the connection
    corrupt: dict[str, int] = field(default_factory=dict)  # number of GETs that return flipped bytes
    status: dict[str, list[int]] = field(default_factory=dict)  # answer HEAD/GET with these statuses first ("api/<repo>": the listing)


class FakeHub:
    """Start with `with FakeHub({...}) as hub:`; `hub.url` is the endpoint to hand to huggingface_hub."""

    def __init__(self, repos: dict[str, FakeRepo], token: str | None = None):
        self.repos = repos
        self.token = token
        self.faults = Faults()
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self, filename: str) -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and r[1].endswith("/" + filename)]

    def _take(self, queue: dict, name: str):
        with self._lock:
            items = queue.get(name)
            if isinstance(items, list) and items:
                return items.pop(0)
            if isinstance(items, int) and items > 0:
                queue[name] = items - 1
                return True
        return None


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if m := _API.match(path):
                return self._api(m["repo"])
            if m := _RESOLVE.match(path):
                return self._resolve(m["repo"], m["file"], body)
            self._error(404, "RepoNotFound")

        def _repo(self, repo_id: str) -> FakeRepo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None
            auth = self.headers.get("Authorization", "")
            if repo.gated and auth != f"Bearer {hub.token}":
                self._error(401, "GatedRepo")
                return None
            return repo

        def _api(self, repo_id: str) -> None:
            if (status := hub._take(hub.faults.status, f"api/{repo_id}")) is not None:
                return self._error(status, None)
            repo = self._repo(repo_id)
            if repo is None:
                return
            siblings = []
            for name, data in sorted(repo.files.items()):
                entry = {"rfilename": name, "size": len(data), "blobId": repo.etag(name)}
                if name in repo.lfs:
                    entry["lfs"] = {"size": len(data), "sha256": repo.etag(name), "pointerSize": 134}
                siblings.append(entry)
            payload = json.dumps({"id": repo_id, "sha": repo.commit, "siblings": siblings}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _resolve(self, repo_id: str, name: str, body: bool) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if (status := hub._take(hub.faults.status, name)) is not None:
                return self._error(status, "EntryNotFound" if status == 404 else None, commit=repo.commit)
            if name not in repo.files:
                return self._error(404, "EntryNotFound", commit=repo.commit)
            data = repo.files[name]
            if body and hub._take(hub.faults.corrupt, name):
                data = bytes(b ^ 0xFF for b in data)
            start = 0
            if body and (rng := self.headers.get("Range")):
                start = int(re.match(r"bytes=(\d+)-", rng).group(1))
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            self.send_header("ETag", f'"{repo.etag(name)}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            cut = hub._take(hub.faults.truncate, name) if not start else None
            if cut is not None:
                self.wfile.write(data[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(data[start:])

        def _error(self, status: int, code: str | None, commit: str | None = None) -> None:
            payload = json.dumps({"error": code or f"HTTP {status}"}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

    return Handler
