"""A local stand-in for the Hugging Face Hub on 127.0.0.1, for tests and benchmarks.

It serves checkpoint directories the way the Hub answers ``huggingface_hub`` 2.x (see
/work/shared/NOTES.md, "The Hub as huggingface_hub 2.x sees it"):

- ``GET /api/models/{repo}/revision/{rev}``: ``{"id", "sha", "siblings": [{"rfilename"}]}``;
  an unknown repo is 404 with ``X-Error-Code: RepoNotFound``, an unknown revision 404 with
  ``RevisionNotFound``.
- ``GET /api/agent-harnesses``: an empty registry of AI agent harnesses
  (``{"standardEnvVars": [], "harnesses": {}}``). huggingface_hub 2.x fetches it to build its
  user agent (unless ``HF_HUB_DISABLE_TELEMETRY``) and caches it in ``HF_HOME`` for a day
  only when the fetch succeeds: a 404 here made every process pay that round trip again.
- ``HEAD|GET /{repo}/resolve/{rev}/{file}``: ``X-Repo-Commit`` and ``ETag``; an LFS file
  (``*.safetensors``, ``*.bin``, ...) answers with a 302 to ``/cdn/...`` (``X-Linked-Etag``,
  ``X-Linked-Size``; on another server, another origin, when :attr:`HubServer.cdn` names
  one), which clients follow; ``Range: bytes=a-b`` → 206 with ``Content-Range``. An unknown file
  is 404 ``EntryNotFound``; a gated repo without the right token 403 ``GatedRepo``; a private
  one 401 ``RepoNotFound``.

Faults (:class:`Fault`) are injected per request whose path contains a substring: an HTTP
status a number of times (500-then-OK, 429), a slow response, a range answered with the
whole file (on the redirect target, or on the first request instead of its 302), with a
wrong ``Content-Range`` or with more than the range (announced, or chunked without a length),
a 302 carrying the whole file as its body, a truncated body, a
connection reset, a changed ETag. ``latency`` delays every request. Every request is logged
(:attr:`HubServer.log`) with the bytes of body the server actually wrote to the socket, so
tests and benchmarks can count requests and bytes, and :attr:`HubServer.max_in_flight` says
how many were served at once.

Bodies are streamed from the file in chunks (a sparse multi-GB shard costs neither memory nor
disk). Bytes the client should not read (a whole file answering a range request, the body of
a 302, a body longer than the range) are sent the way that makes the count a measure of the
client, not of the kernel's socket buffers: one :data:`WINDOW` of them, then nothing more
until the client has either closed the connection (the count stays at one window past what
was asked for) or left it open for :data:`HOLD` seconds (a client reading on: the rest
follows, up to :data:`CAP`, and the connection is closed, so a client that would download a
whole 4 GB shard fails in seconds).

Usage::

    with HubServer({"org/name": Repo(Path("ckpt"))}, latency=0.05) as hub:
        os.environ["HF_ENDPOINT"] = hub.url

``python tests/hub_server.py org/name=DIR ... [--latency S]`` serves until interrupted.
"""

from __future__ import annotations

import hashlib
import http.server
import itertools
import json
import os
import queue
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

#: Files served like LFS files (as the Hub's default .gitattributes): a 302 to the "CDN" path.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
#: Files smaller than this get a sha256 ETag; larger ones a stamp (see HubServer.etag).
HASHED_MAX = 10_000_000
#: Bodies are read from the file and written to the socket in chunks of this size.
CHUNK = 256 * 1024
#: A body the client should refuse: bytes sent with the headers, seconds then given to the
#: client to close the connection, and the most sent in all when it does not.
WINDOW = 16 * 1024
HOLD = 2.0
CAP = 8 * 2**20


@dataclass
class Repo:
    """A repo served from ``root`` (every file below it, recursively), at commit ``sha``."""

    root: Path
    sha: str = "0" * 40
    branches: dict[str, str] = field(default_factory=dict)
    #: A token that unlocks a gated or private repo.
    token: Optional[str] = None
    gated: bool = False
    private: bool = False

    def files(self) -> list[str]:
        return sorted(
            p.relative_to(self.root).as_posix() for p in self.root.rglob("*") if p.is_file()
        )

    def resolve(self, rev: str) -> Optional[str]:
        """Commit of a branch name or of the commit itself."""
        if rev in (self.sha, "main"):
            return self.sha
        return self.branches.get(rev)


@dataclass
class Fault:
    """A fault for requests whose path contains ``match`` (and method ``method`` if set).

    ``kind``: ``"status"`` (answer ``status``), ``"slow"`` (sleep ``delay`` s first),
    ``"whole"`` (answer a range request with 200 and the whole file; on a ``/resolve/`` path
    of an LFS file, instead of the 302, as a proxy that ignores Range would), ``"fat_redirect"``
    (a 302 whose body is the whole file), ``"bad_range"`` (206 with a Content-Range that is off
    by 16 bytes), ``"long_body"`` (206 with the right Content-Range but the rest of the file
    announced and sent), ``"chunked_extra"`` (206 with the right Content-Range, no
    Content-Length, the rest of the file sent chunked), ``"truncate"`` (announce the full length, send half, close), ``"reset"``
    (close the connection without answering), ``"etag"`` (a different ETag from then on).
    ``after``: matching requests let through first; ``times``: how many matching requests it
    applies to after those (None: all).
    """

    kind: str
    match: str = ""
    times: Optional[int] = 1
    status: int = 500
    delay: float = 0.0
    method: Optional[str] = None
    after: int = 0
    hits: int = 0
    seen: int = 0

    def applies(self, method: str, path: str) -> bool:
        if self.match not in path or (self.method and self.method != method):
            return False
        self.seen += 1
        if self.seen <= self.after:
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


@dataclass
class Request:
    method: str
    path: str
    range: Optional[str]
    status: int
    body_bytes: int
    #: Whether the request carried an ``Authorization`` header (a token).
    authorized: bool = False


class HubServer:
    """The server, in a daemon thread; a context manager. ``url`` is its endpoint."""

    def __init__(self, repos: dict[str, Repo], *, latency: float = 0.0, threads: int = 0) -> None:
        """``threads``: handler threads started now, before any connection (0: one thread is
        started per connection when it arrives, by the accepting thread, as http.server does).
        A benchmark wants them: a connection otherwise waits for the threads of the
        connections before it to start (25-70 ms for 100 connections on the 2-core VM here),
        which is this server's cost, not the client's nor the Hub's."""
        self.repos = repos
        self.latency = latency
        #: Where a 302 sends LFS files: this server ('') or another one's URL (another origin,
        #: as the Hub's CDN is).
        self.cdn = ""
        self.faults: list[Fault] = []
        self.request_ids = itertools.count(1)
        self.log: list[Request] = []
        #: Requests being served now, and the most seen at once since the last reset().
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._etags: dict[tuple[str, str], str] = {}
        self._roots: dict[Path, Path] = {}
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = _Server(("127.0.0.1", 0), Handler, threads)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def fault(self, kind: str, match: str = "", **kw: Any) -> Fault:
        """Add and return a :class:`Fault`."""
        f = Fault(kind, match, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def reset(self) -> None:
        """Forget faults and the request log."""
        with self._lock:
            self.faults.clear()
            self.log.clear()
            self.max_in_flight = self.in_flight

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until no request is being served (a response the client closed early is logged
        once the server has seen the close)."""
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.005)

    def root(self, repo: Repo) -> Path:
        """``repo.root`` resolved (once)."""
        with self._lock:
            if repo.root not in self._roots:
                self._roots[repo.root] = repo.root.resolve()
            return self._roots[repo.root]

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def take_fault(self, method: str, path: str) -> list[Fault]:
        with self._lock:
            return [f for f in self.faults if f.applies(method, path)]

    def record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)

    def etag(self, repo: str, path: Path, rel: str, changed: bool) -> str:
        """ETag of a file: sha256 for small files, a stamp of size and mtime for large ones
        (as cheap as the Hub's stored LFS oid); a ``"etag"`` fault changes it."""
        key = (repo, rel)
        with self._lock:
            if changed:
                self._etags[key] = hashlib.sha256(f"changed{time.time()}".encode()).hexdigest()
            if key not in self._etags:
                st = path.stat()
                if st.st_size < HASHED_MAX:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                else:
                    digest = hashlib.sha256(
                        f"{rel}:{st.st_size}:{st.st_mtime_ns}".encode()
                    ).hexdigest()
                self._etags[key] = digest
            return self._etags[key]


class _Server(http.server.ThreadingHTTPServer):
    """http.server with a listen backlog for parallel clients and, optionally, handler threads
    started in advance."""

    #: The listen backlog. socketserver's default of 5 drops the SYNs of a client that opens
    #: more connections at once (the kernel then retries after 1 s), which the Hub does not.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], handler: type[_Handler], threads: int) -> None:
        super().__init__(address, handler)
        self.daemon_threads = True
        self._idle = 0
        self._idle_lock = threading.Lock()
        self._connections: queue.SimpleQueue[Optional[tuple[Any, Any]]] = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]
        for t in self._workers:
            t.start()

    def _work(self) -> None:
        while True:
            with self._idle_lock:
                self._idle += 1
            item = self._connections.get()
            if item is None:
                return
            self.process_request_thread(*item)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to an idle prestarted thread, else start one for it (as
        ThreadingHTTPServer does for every connection)."""
        with self._idle_lock:
            if self._idle:
                self._idle -= 1
                self._connections.put((request, client_address))
                return
        super().process_request(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._connections.put(None)


_RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_API = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>[^/]+)$")
_CDN = re.compile(r"^/cdn/(?P<repo>[^/]+/[^/]+)/(?P<sha>[0-9a-f]+)/(?P<file>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: TCP_NODELAY: http.server writes the headers and the body in two sends, and with Nagle's
    #: algorithm on, the body waits for the client's delayed ACK of the headers (~40 ms per
    #: response on Linux) on a reused connection: an artifact of this server, not of the Hub.
    disable_nagle_algorithm = True
    hub: HubServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    # -- helpers -----------------------------------------------------------------------------
    def _send(
        self,
        method: str,
        status: int,
        body: bytes = b"",
        headers: Optional[dict[str, str]] = None,
        length: Optional[int] = None,
    ) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        # Headers and body in one write (one segment), as a production server sends them.
        self._headers_buffer.append(b"\r\n")
        sent = 0
        if method != "HEAD" and body:
            self._headers_buffer.append(body)
            sent = len(body)
        self.flush_headers()
        self._record(Request(method, self.path, self.headers.get("Range"), status, sent))

    def _record(self, req: Request) -> None:
        req.authorized = "Authorization" in self.headers
        self.hub.record(req)

    def _error(self, method: str, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        # As the Hub, an id for the request (which a bug report quotes).
        request_id = f"local-{status}-{next(self.hub.request_ids)}"
        headers = {"X-Error-Code": code, "X-Error-Message": message, "X-Request-Id": request_id}
        headers["Content-Type"] = "application/json"
        self._send(method, status, body, headers)

    def _authorized(self, repo: Repo) -> bool:
        return (
            repo.token is not None and self.headers.get("Authorization") == f"Bearer {repo.token}"
        )

    # -- dispatch ----------------------------------------------------------------------------
    def _serve(self, method: str) -> None:
        self.hub.enter()
        try:
            self._dispatch(method)
        finally:
            self.hub.leave()

    def _dispatch(self, method: str) -> None:
        path = urlsplit(self.path).path
        faults = self.hub.take_fault(method, path)
        if self.hub.latency:
            time.sleep(self.hub.latency)
        for f in faults:
            if f.kind == "slow":
                time.sleep(f.delay)
            elif f.kind == "status":
                self._error(method, f.status, "", f"injected {f.status}")
                return
            elif f.kind == "reset":
                self._record(Request(method, self.path, self.headers.get("Range"), 0, 0))
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
                self.close_connection = True
                self.connection.close()
                return
        kinds = {f.kind for f in faults}
        if path == "/api/agent-harnesses":
            body = json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()
            self._send(method, 200, body, {"Content-Type": "application/json"})
        elif m := _API.match(path):
            self._api(method, unquote(m["repo"]), unquote(m["rev"]))
        elif m := _RESOLVE.match(path):
            self._resolve(method, m["repo"], unquote(m["rev"]), unquote(m["file"]), kinds)
        elif m := _CDN.match(path):
            self._cdn(method, m["repo"], m["sha"], unquote(m["file"]), kinds)
        else:
            self._error(method, 404, "", f"no route for {path}")

    def _repo(self, method: str, name: str) -> Optional[Repo]:
        repo = self.hub.repos.get(name)
        if repo is None or (repo.private and not self._authorized(repo)):
            self._error(method, 401 if repo else 404, "RepoNotFound", "Repository not found")
            return None
        return repo

    def _api(self, method: str, name: str, rev: str) -> None:
        repo = self._repo(method, name)
        if repo is None:
            return
        sha = repo.resolve(rev)
        if sha is None:
            self._error(method, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        info = {
            "id": name,
            "sha": sha,
            "private": repo.private,
            "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": f} for f in repo.files()],
        }
        body = json.dumps(info).encode()
        self._send(method, 200, body, {"Content-Type": "application/json"})

    def _file(self, method: str, repo: Repo, rel: str) -> Optional[Path]:
        target = (repo.root / rel).resolve()
        root = self.hub.root(repo)
        if root not in target.parents or not target.is_file():
            self._error(method, 404, "EntryNotFound", f"{rel} does not exist")
            return None
        return target

    def _resolve(self, method: str, name: str, rev: str, rel: str, kinds: set[str]) -> None:
        repo = self._repo(method, name)
        if repo is None:
            return
        if repo.gated and not self._authorized(repo):
            self._error(
                method,
                403,
                "GatedRepo",
                f"Access to model {name} is restricted. You must have access to it and be authenticated to access it. Please log in.",
            )
            return
        sha = repo.resolve(rev)
        if sha is None:
            self._error(method, 404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return
        target = self._file(method, repo, rel)
        if target is None:
            return
        etag = self.hub.etag(name, target, rel, "etag" in kinds)
        size = target.stat().st_size
        if rel.endswith(LFS_SUFFIXES) and not ("whole" in kinds and "Range" in self.headers):
            headers = {
                "X-Repo-Commit": sha,
                "X-Linked-Etag": f'"{etag}"',
                "X-Linked-Size": str(size),
                "ETag": f'"{hashlib.sha1(rel.encode()).hexdigest()}"',
                "Location": f"{self.hub.cdn}/cdn/{name}/{sha}/{rel}?sig=local",
            }
            if "fat_redirect" in kinds and method != "HEAD":
                # The file as the body of the redirect (a client must not read it).
                self._stream(method, 302, headers, target, 0, size, excess_from=0)
                return
            self._send(method, 302, b"", headers)
            return
        self._body(method, target, etag, {"X-Repo-Commit": sha}, kinds)

    def _cdn(self, method: str, name: str, sha: str, rel: str, kinds: set[str]) -> None:
        repo = self.hub.repos.get(name)
        if repo is None or sha != repo.sha:
            self._error(method, 404, "", "no such object")
            return
        target = self._file(method, repo, rel)
        if target is None:
            return
        etag = self.hub.etag(name, target, rel, "etag" in kinds)
        self._body(method, target, etag, {}, kinds)

    def _body(
        self, method: str, target: Path, etag: str, headers: dict[str, str], kinds: set[str]
    ) -> None:
        size = target.stat().st_size
        headers = {**headers, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        rng = self.headers.get("Range")
        start, end, status = 0, size - 1, 200
        if rng is not None and "whole" not in kinds:
            m = _RANGE.match(rng.strip())
            if m is None or int(m[1]) >= size:
                headers["Content-Range"] = f"bytes */{size}"
                self._send(method, 416, b"", headers)
                return
            start = int(m[1])
            end = min(size - 1, int(m[2])) if m[2] else size - 1
            status = 206
            shown = (start + 16, end + 16) if "bad_range" in kinds else (start, end)
            headers["Content-Range"] = f"bytes {shown[0]}-{shown[1]}/{size}"
        length = end - start + 1
        excess_from = 0 if status == 200 and rng is not None else None
        chunked = False
        if status == 206 and "long_body" in kinds:
            length, excess_from = size - start, 0
        elif status == 206 and "chunked_extra" in kinds:
            length, excess_from, chunked = size - start, length, True
        self._stream(
            method,
            status,
            headers,
            target,
            start,
            length,
            excess_from=excess_from,
            chunked=chunked,
            kinds=kinds,
        )

    def _stream(
        self,
        method: str,
        status: int,
        headers: dict[str, str],
        target: Path,
        start: int,
        length: int,
        *,
        excess_from: Optional[int] = None,
        chunked: bool = False,
        kinds: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        """Send ``length`` bytes of ``target`` from ``start`` as the body (``chunked``: in the
        chunked encoding, without a Content-Length), in chunks read from the file, and log the
        bytes the socket took. ``excess_from``: where the bytes the client should not read
        begin (see the module docs: one window of them, then wait for the client to close)."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(length))
        self._headers_buffer.append(b"\r\n")
        rng = self.headers.get("Range")
        if method == "HEAD":
            self.flush_headers()
            self._record(Request(method, self.path, rng, status, 0))
            return
        todo = length // 2 if "truncate" in kinds else length
        held = excess_from is None
        if excess_from is not None:
            todo = min(todo, excess_from + CAP)
        sent = 0
        headers_sent = False
        try:
            with open(target, "rb") as f:
                if held and not chunked:
                    # A body sent as asked for: the kernel copies it (sendfile), as a CDN's
                    # server would, so this server's CPU stays off the cores a benchmark
                    # times the client on (reading and writing the 4.7 GB of the 6-layer 8B
                    # in Python took 13.6 s of CPU on a 2-core Intel Xeon).
                    self.flush_headers()
                    headers_sent = True
                    if todo:
                        sent = self.connection.sendfile(f, start, todo)
                f.seek(start + sent)
                while sent < todo:
                    n = min(CHUNK, todo - sent)
                    if not held:
                        assert excess_from is not None
                        if sent >= excess_from + WINDOW:
                            held = True
                            if self._closed_by_client(HOLD):
                                break
                        else:
                            n = min(n, excess_from + WINDOW - sent)
                    data = f.read(n)
                    if not data:
                        break
                    chunk = b"%x\r\n%b\r\n" % (len(data), data) if chunked else data
                    if not headers_sent:
                        # Headers and the first chunk in one write, as a production server does.
                        self._headers_buffer.append(chunk)
                        self.flush_headers()
                        headers_sent = True
                    else:
                        self.wfile.write(chunk)
                    sent += len(data)
            if not headers_sent:
                self.flush_headers()
            if chunked and sent == length:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self._record(Request(method, self.path, rng, status, sent))
        if sent < length:
            self.close_connection = True

    def _closed_by_client(self, timeout: float) -> bool:
        """Whether the client closes the connection within ``timeout`` seconds."""
        ready, _, _ = select.select([self.connection], [], [], timeout)
        if not ready:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True


def point_hub_client_at(server: HubServer, monkeypatch: Any, tmp_path: Path) -> None:
    """huggingface_hub in this process pointed at ``server`` (as HF_ENDPOINT does at import),
    online, with an empty cache under ``tmp_path`` and no token; lora_rank's retry backoff
    shortened (``monkeypatch``: pytest's, undone after the test)."""
    from huggingface_hub import constants
    from lora_rank.sources import hub as hub_source

    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(
        constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        server.url + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(hub_source, "BACKOFF", 0.01)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("repos", nargs="+", help="org/name=DIRECTORY")
    ap.add_argument("--latency", type=float, default=0.0, help="seconds added to each request")
    args = ap.parse_args()
    repos = {}
    for spec in args.repos:
        name, _, directory = spec.partition("=")
        repos[name] = Repo(Path(directory))
    with HubServer(repos, latency=args.latency) as hub:
        print(f"HF_ENDPOINT={hub.url}", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
