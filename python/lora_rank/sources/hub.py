"""Checkpoints on the Hugging Face Hub (or any HTTP server), read without downloading them.

Accepted sources (besides local paths, which always win when they exist):

- a repo id ``org/name`` (``revision=`` picks a branch, tag or commit);
- ``hf://org/name[@revision][/subfolder or /file]``, and Hub web URLs
  (``https://huggingface.co/org/name/resolve/main/model.safetensors``);
- the URL of a ``.safetensors`` file or a ``*.safetensors.index.json`` on any HTTP(S) server.

A repo id is looked up in the local Hugging Face cache first (:func:`cached_snapshot`: no
network when its snapshot is there). Otherwise only the headers are read
(:func:`open_remote`): the index and ``config.json`` whole, each shard's header with one HTTP
range request whose size is estimated from the tensor names the index lists for it (a second
request only when the header is larger), all shards in parallel, and the bytes go to the same
Rust validation as local files (``_core.checkpoint_from_headers``).

Spectra of a remote checkpoint (:func:`remote_spectra`) stream each matrix once by range
requests into a bounded buffer handed to the Rust solver (``_core.spectra_in_memory``): nothing
is written to disk and the bytes fetched are exactly the bytes of the matrices analysed.

Endpoint, token, offline mode and the cache location come from ``huggingface_hub``
(``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HOME``/``HF_HUB_CACHE``), requests go
through its shared HTTP client with its headers (429, 5xx, timeouts and connection resets are
retried a bounded number of times with backoff, each retry logged as a warning on this module's
logger), and its HTTP errors are turned into one-line
:class:`~lora_rank.errors.HubError` messages naming the repo and file.

Every response is streamed and checked before its body is read (:meth:`_Http.fetch`; the
same for the index, ``config.json``, the repo listing, each shard's header, the spectral
scan's ranges, every retry and every hop of a redirect): its status, ``Content-Range`` (the
bytes asked for), ``Content-Length`` and ``Content-Encoding``, and its ``ETag`` against the
one seen when the header was read (:class:`~lora_rank.FileChangedError`). A response that
fails a check is closed at once, with its connection: a server or proxy that answers a range
request with ``200`` and the whole file costs at most one read buffer of the HTTP client
(64 KiB), not the file. No body is read past the bytes asked for (plus :data:`SLACK`), a
redirect's or an error's body past :data:`SLACK`, a whole file past :data:`MAX_WHOLE`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from .. import _core
from ..errors import FileChangedError, HubError, NotACheckpointError, UnsupportedFormatError
from ..gc_pause import gc_paused
from .checkpoint import Checkpoint
from .local import open_local

if TYPE_CHECKING:  # pragma: no cover
    import httpx2

    from ..report import RemoteShard
    from ..spectral.settings import SpectralSettings

T = TypeVar("T")

#: The name of a repo id: ``namespace/name`` (what the Hub accepts).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: First range of a shard whose tensors are unknown (no index): huggingface_hub's choice.
_DEFAULT_FIRST_RANGE = 100_000
#: Bytes of header JSON per tensor besides its name (dtype, shape, offsets), generous.
_BYTES_PER_ENTRY = 112
#: Parallel requests: as many as the shared session's connection pool holds (httpx: 100), so
#: 191 shards take two waves of round trips. The 405B over tests/hub_server.py at 50 ms, whole
#: process, 7 interleaved runs at load 3-4 (threads then started by a ThreadPoolExecutor):
#: median 0.96 s with 64 or 100, 1.04 s with 48, 1.17 s with 32, 1.00 s with 191 (the pool
#: caps it); with the threads started ahead, 64 and 100 equal again (0.87/0.89 s, 15 runs).
MAX_PARALLEL = 100
#: Attempts per request, and the first wait between them (doubling).
RETRIES = 4
BACKOFF = 0.25
#: Statuses retried (rate limit and server errors, as huggingface_hub's default).
RETRIED_STATUS = (429, 500, 502, 503, 504)
#: Read timeout of every request, seconds; also the longest ``Retry-After`` waited for.
TIMEOUT = 30.0
#: Body bytes read past what a request asked for before the response is refused, and the
#: most read of a redirect's or an error's body: one read of the HTTP client (httpcore reads
#: the socket 64 KiB at a time, so a refused response costs that much at most anyway).
SLACK = 64 * 1024
#: Largest file read whole (an index, ``config.json``, a repo listing): the format's header
#: limit, the limit of local JSON files too (``checkpoint.rs``).
MAX_WHOLE = 100_000_000
#: Redirects followed per request (httpx's default bound).
MAX_REDIRECTS = 20
#: Buffer for a spectral scan: a batch of matrices is fetched while the previous is solved
#: only when both fit in this (or the largest matrix alone); matrices never split.
SPECTRAL_BUFFER = 256 * 2**20

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HubSource:
    """Where a remote checkpoint is: a hub repo (``repo_id``, ``revision``, ``path_in_repo``)
    or a plain ``url``."""

    repo_id: Optional[str] = None
    revision: Optional[str] = None
    #: A subfolder, or a file (``.safetensors`` / ``.index.json``) inside the repo.
    path_in_repo: str = ""
    url: Optional[str] = None

    @property
    def file(self) -> Optional[str]:
        """The file named by ``path_in_repo``, if it names one."""
        p = self.path_in_repo
        return p if p.endswith((".safetensors", ".json", *_PICKLE)) else None

    @property
    def folder(self) -> str:
        """The folder inside the repo holding the checkpoint ('' for the root)."""
        p = self.path_in_repo
        return p.rsplit("/", 1)[0] if "/" in p and self.file else ("" if self.file else p)

    def display(self, sha: Optional[str] = None) -> str:
        """``hf://org/name@rev/folder`` (pinned to ``sha`` when given), or the URL."""
        if self.url is not None:
            return self.url
        rev = sha or self.revision
        root = f"hf://{self.repo_id}" + (f"@{rev}" if rev else "")
        return root + (f"/{self.folder}" if self.folder else "")


def parse_source(source: str, revision: Optional[str] = None) -> Optional[HubSource]:
    """The :class:`HubSource` a string names, or None for a local path (existing paths are
    always local).

    Example:
        >>> parse_source("org/name", revision="v1")
        HubSource(repo_id='org/name', revision='v1', path_in_repo='', url=None)
        >>> parse_source("hf://org/name@abc/sub/model.safetensors").file
        'sub/model.safetensors'
        >>> parse_source("./local/dir") is None
        True
    """
    if os.path.exists(source):
        return None
    if source.startswith("hf://") or _is_hub_url(source):
        from huggingface_hub import constants
        from huggingface_hub.errors import HfUriError
        from huggingface_hub.utils._hf_uris import parse_hf_uri

        try:
            uri = parse_hf_uri(source, endpoint=constants.ENDPOINT)
        except HfUriError as e:
            raise HubError(f"{source}: not a Hugging Face location: {e}") from None
        if uri.type != "model":
            raise HubError(f"{source}: only model repos are supported, not {uri.type} repos")
        return HubSource(uri.id, revision or uri.revision, uri.path_in_repo)
    if source.startswith(("http://", "https://")):
        path = urlsplit(source).path
        if not path.endswith((".safetensors", ".index.json")):
            raise HubError(
                f"{source}: a URL must name a .safetensors file or a *.safetensors.index.json"
            )
        return HubSource(url=source)
    if _REPO_ID.match(source) and not source.startswith("."):
        return HubSource(source, revision)
    return None


def _is_hub_url(source: str) -> bool:
    """Whether an http(s) URL is on the Hub endpoint (then it is a repo location)."""
    if not source.startswith(("http://", "https://")):
        return False
    from huggingface_hub import constants

    hosts = {urlsplit(constants.ENDPOINT).netloc, "huggingface.co", "hf.co"}
    return urlsplit(source).netloc in hosts


def offline() -> bool:
    """Whether ``huggingface_hub`` is in offline mode (``HF_HUB_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cached_snapshot(src: HubSource) -> Optional[str]:
    """The local path of ``src`` in the Hugging Face cache (the file, or the snapshot folder
    holding an index or ``model.safetensors``), or None when it is not cached. No network.

    Example:
        >>> cached_snapshot(HubSource("nobody/not-cached-anywhere")) is None
        True
    """
    if src.repo_id is None:
        return None
    from huggingface_hub import constants

    # No folder for the repo: what try_to_load_from_cache answers too, without importing
    # huggingface_hub.file_download (~30 ms) on the way to the network.
    folder_name = constants.REPO_ID_SEPARATOR.join(["models", *src.repo_id.split("/")])
    if not os.path.isdir(os.path.join(constants.HF_HUB_CACHE, folder_name)):
        return None
    from huggingface_hub import try_to_load_from_cache

    folder = f"{src.folder}/" if src.folder else ""
    names = (
        [src.file]
        if src.file
        else [f"{folder}model.safetensors.index.json", f"{folder}model.safetensors"]
    )
    for name in names:
        assert name is not None
        hit = try_to_load_from_cache(src.repo_id, name, revision=src.revision)
        if isinstance(hit, str):
            return hit if src.file else os.path.dirname(hit)
    return None


# -- HTTP ------------------------------------------------------------------------------------
class _Http:
    """Requests of one checkpoint: huggingface_hub's session, headers and backoff; every
    response checked; ETags remembered per URL; requests and bytes counted."""

    def __init__(self, src: HubSource, headers: Optional[Mapping[str, str]] = None) -> None:
        self.src = src
        self.headers = dict(self.build_headers(src) if headers is None else headers)
        self.etags: dict[str, str] = {}
        self.requests = 0
        self.bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def build_headers(src: HubSource) -> dict[str, str]:
        """``huggingface_hub``'s headers (token, user agent) for the Hub endpoint; none for
        another server (the token goes only to the Hub)."""
        headers: dict[str, str] = {}
        if src.repo_id is not None or (src.url is not None and _is_hub_url(src.url)):
            from huggingface_hub.utils._headers import build_hf_headers

            headers = build_hf_headers()
        headers["Accept-Encoding"] = "identity"
        return headers

    def url(self, name: str, revision: Optional[str]) -> str:
        if self.src.url is not None:
            base = self.src.url.rsplit("/", 1)[0]
            return f"{base}/{quote(name)}"
        from huggingface_hub import constants

        # What huggingface_hub.hf_hub_url builds for a model repo (its own URL template),
        # without importing huggingface_hub.file_download (25-35 ms) before the first request.
        return constants.HUGGINGFACE_CO_URL_TEMPLATE.format(
            repo_id=self.src.repo_id or "",
            revision=quote(revision or constants.DEFAULT_REVISION, safe=""),
            filename=quote(name),
        )

    def where(self, name: str) -> str:
        """How a file is named in messages."""
        if self.src.url is not None:
            return self.url(name, None)
        return f"{self.src.repo_id}: {name}" + (
            f" (revision {self.src.revision})" if self.src.revision else ""
        )

    @staticmethod
    def _etag(chain: Sequence[httpx2.Response]) -> Optional[str]:
        """The file's ETag from the responses of a request, its redirects first."""
        for r in chain:
            linked = r.headers.get("X-Linked-Etag")
            if linked:
                return linked.lstrip("W/").strip('"')
        tag = chain[-1].headers.get("ETag")
        return tag.lstrip("W/").strip('"') if tag else None

    def _check_etag(self, url: str, where: str, chain: Sequence[httpx2.Response]) -> None:
        etag = self._etag(chain)
        if etag is None:
            return
        with self._lock:
            first = self.etags.setdefault(url, etag)
        if first != etag:
            raise FileChangedError(
                f"{where}: file changed while it was being read: ETag {first!r} became {etag!r}"
            )

    def get(
        self,
        name: str,
        revision: Optional[str],
        byte_range: Optional[tuple[int, int]] = None,
    ) -> tuple[bytes, dict[str, str], Optional[int]]:
        """GET file ``name`` of the source at ``revision`` (see :meth:`fetch`)."""
        return self.fetch(self.url(name, revision), self.where(name), byte_range)

    def fetch(
        self,
        url: str,
        where: str,
        byte_range: Optional[tuple[int, int]] = None,
        sink: Optional[Callable[[int, bytes], None]] = None,
        limit: Optional[int] = None,
    ) -> tuple[bytes, dict[str, str], Optional[int]]:
        """GET ``url`` (or bytes ``[a, b)`` of it; ``where`` names it in messages). Returns
        (the body unless ``sink(offset, chunk)`` takes it, the final response's headers, the
        file's total size from ``Content-Range``). A whole file (no ``byte_range``) may have
        at most ``limit`` bytes (default :data:`MAX_WHOLE`).

        Each attempt streams the response and checks it before reading its body (see the
        module docs); redirects are followed here, hop by hop, each checked the same way (the
        token goes only to the first request's host). Retried (:data:`RETRIES` attempts in
        all, with backoff) on :data:`RETRIED_STATUS`, timeouts, network errors and short
        bodies; never on a response that is wrong (a 200 for a range, a wrong length)."""
        import httpx2
        from huggingface_hub.errors import HfHubHTTPError

        most = MAX_WHOLE if limit is None else limit
        wait = BACKOFF
        for attempt in range(1, RETRIES + 1):
            got = [0]
            try:
                return self._attempt(url, where, byte_range, sink, most, got)
            except _Retry as e:
                if attempt == RETRIES:
                    raise _http_error(self.src, where, e.error) from None
                reason = f"HTTP error {e.status}"
                pause = max(wait, min(e.retry_after or 0.0, TIMEOUT))
            except _Truncated as e:
                if attempt == RETRIES:
                    raise HubError(
                        f"{where}: truncated response body after {RETRIES} attempts ({e})"
                    ) from None
                reason, pause = f"truncated response body ({e})", wait
            except httpx2.ConnectError as e:
                if attempt == RETRIES:
                    host = urlsplit(url).netloc
                    raise HubError(
                        f"{where}: could not connect to {host} after {RETRIES} attempts: {e}"
                    ) from None
                reason, pause = f"{type(e).__name__}: {e}", wait
            except (
                httpx2.TimeoutException,
                httpx2.NetworkError,
                httpx2.RemoteProtocolError,
            ) as e:
                if attempt == RETRIES:
                    raise HubError(
                        f"{where}: {type(e).__name__} after {RETRIES} attempts: {e}"
                    ) from None
                reason, pause = f"{type(e).__name__}: {e}", wait
            except HfHubHTTPError as e:
                raise _http_error(self.src, where, e) from None
            except (httpx2.TransportError, httpx2.InvalidURL, OSError) as e:
                raise HubError(f"{where}: {type(e).__name__}: {e}") from None
            finally:
                with self._lock:
                    self.bytes += got[0]
            _log.warning(
                "%s: %s; retrying in %.2f s (attempt %d of %d)",
                where,
                reason,
                pause,
                attempt + 1,
                RETRIES,
            )
            time.sleep(pause)
            wait *= 2
        raise AssertionError("unreachable")

    def _attempt(
        self,
        url: str,
        where: str,
        byte_range: Optional[tuple[int, int]],
        sink: Optional[Callable[[int, bytes], None]],
        limit: int,
        got: list[int],
    ) -> tuple[bytes, dict[str, str], Optional[int]]:
        """One attempt of :meth:`fetch`; ``got[0]`` counts the body bytes read."""
        from huggingface_hub.utils._http import get_session

        client = get_session()
        headers = dict(self.headers)
        if byte_range is not None:
            headers["Range"] = f"bytes={byte_range[0]}-{byte_range[1] - 1}"
        origin = _origin(url)
        chain: list[httpx2.Response] = []
        for _ in range(MAX_REDIRECTS + 1):
            request = client.build_request("GET", url, headers=headers, timeout=TIMEOUT)
            response = client.send(request, stream=True, follow_redirects=False)
            try:
                with self._lock:
                    self.requests += 1
                chain.append(response)
                if response.has_redirect_location:
                    _skip_body(response)
                    url = urljoin(url, response.headers["Location"])
                    if _origin(url) != origin:  # as httpx: the token stays on its host
                        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                    continue
                if response.status_code >= 400:
                    _raise_status(response)
                total, expected = self._check(url, where, chain, byte_range, limit)
                body = _read_body(response, where, expected, limit, sink, got)
                return body, dict(response.headers), total
            finally:
                response.close()  # drops the connection when its body was not read to the end
        raise HubError(f"{where}: more than {MAX_REDIRECTS} redirects")

    def _check(
        self,
        url: str,
        where: str,
        chain: Sequence[httpx2.Response],
        byte_range: Optional[tuple[int, int]],
        limit: int,
    ) -> tuple[Optional[int], Optional[int]]:
        """(total size from Content-Range, bytes the body must have) of a response, after
        checking its status, Content-Range, Content-Length, Content-Encoding and ETag; no byte
        of its body read."""
        response = chain[-1]
        total = self._check_range(where, response, byte_range)
        expected = None
        if byte_range is not None:
            assert total is not None
            expected = min(byte_range[1], total) - byte_range[0]
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding != "identity":
            raise HubError(
                f"{where}: the server sent the body encoded ({encoding}) although it was asked "
                "for the bytes as they are"
            )
        value = response.headers.get("Content-Length")
        if value is not None:
            length = int(value) if value.strip().isdigit() else -1
            if expected is not None and length != expected:
                raise HubError(
                    f"{where}: the server announced {value.strip()} bytes for a range of "
                    f"{expected} bytes; refusing to read them"
                )
            if expected is None and not 0 <= length <= limit:
                raise HubError(
                    f"{where}: {value.strip()} bytes is larger than the {limit}-byte limit for "
                    "this file"
                )
        self._check_etag(url, where, chain)
        return total, expected

    @staticmethod
    def _check_range(
        where: str, response: httpx2.Response, byte_range: Optional[tuple[int, int]]
    ) -> Optional[int]:
        status = response.status_code
        if byte_range is None:
            if status != 200:
                raise HubError(f"{where}: unexpected HTTP status {status}")
            return None
        if status != 206:
            whole = " (the whole file)" if status == 200 else ""
            raise HubError(
                f"{where}: the server answered a range request with status "
                f"{status}{whole} instead of 206; refusing to download it"
            )
        value = response.headers.get("Content-Range", "")
        m = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+)", value.strip())
        if m is None:
            raise HubError(f"{where}: unreadable Content-Range {value!r}")
        start, end, total = int(m[1]), int(m[2]), int(m[3])
        want_end = min(byte_range[1], total) - 1
        if start != byte_range[0] or end != want_end:
            raise HubError(
                f"{where}: wrong Content-Range {value!r} for bytes "
                f"{byte_range[0]}-{byte_range[1] - 1}"
            )
        return total


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


def _skip_body(response: httpx2.Response) -> None:
    """Done with a redirect: its body read (to keep the connection) only when it announces at
    most :data:`SLACK` bytes; otherwise closing the response drops the connection."""
    import httpx2

    value = response.headers.get("Content-Length", "")
    if value.strip().isdigit() and int(value) <= SLACK:
        with contextlib.suppress(httpx2.TransportError):
            response.read()


def _raise_status(response: httpx2.Response) -> None:
    """Raise ``huggingface_hub``'s error for an HTTP error status (:class:`_Retry` for a
    retried one), from at most :data:`SLACK` bytes of its body (the message's JSON)."""
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils._http import hf_raise_for_status

    body = b""
    try:
        for chunk in response.iter_raw():
            body += chunk
            if len(body) >= SLACK:
                break
    except httpx2.TransportError:
        pass
    dropped = ("content-length", "content-encoding", "transfer-encoding")
    bounded = httpx2.Response(
        response.status_code,
        headers=[(k, v) for k, v in response.headers.multi_items() if k.lower() not in dropped],
        content=body[:SLACK],
        request=response.request,
        extensions={k: v for k, v in response.extensions.items() if k == "reason_phrase"},
    )
    try:
        hf_raise_for_status(bounded)
    except HfHubHTTPError as e:
        if response.status_code in RETRIED_STATUS:
            raise _Retry(e, response.status_code, response.headers.get("Retry-After")) from None
        raise
    raise HubError(f"unexpected HTTP status {response.status_code}")  # pragma: no cover


def _read_body(
    response: httpx2.Response,
    where: str,
    expected: Optional[int],
    limit: int,
    sink: Optional[Callable[[int, bytes], None]],
    got: list[int],
) -> bytes:
    """The body of a checked response (or ``b""`` when ``sink`` takes it): exactly
    ``expected`` bytes, or at most ``limit``; never more than one chunk of the socket read past
    them, whatever the server sends."""
    import httpx2

    cap = limit if expected is None else expected
    parts: list[bytes] = []
    try:
        for chunk in response.iter_raw():
            got[0] += len(chunk)
            if got[0] > cap:
                if expected is None:
                    raise HubError(f"{where}: larger than the {limit}-byte limit for this file")
                raise HubError(f"{where}: the server sent more than the {expected} bytes requested")
            if sink is None:
                parts.append(chunk)
            else:
                sink(got[0] - len(chunk), chunk)
    except (httpx2.RemoteProtocolError, httpx2.ReadError, httpx2.ReadTimeout) as e:
        raise _Truncated(got[0], expected, str(e)) from None
    if expected is not None and got[0] != expected:
        raise _Truncated(got[0], expected)
    return b"".join(parts)


class _Retry(Exception):
    """A retried HTTP status (``error``: ``huggingface_hub``'s exception for it)."""

    def __init__(self, error: Exception, status: int, retry_after: Optional[str]) -> None:
        super().__init__(str(status))
        self.error = error
        self.status = status
        value = (retry_after or "").strip()
        self.retry_after = float(value) if value.isdigit() else None


class _Truncated(Exception):
    def __init__(self, got: int, expected: Optional[int], why: str = "") -> None:
        of = f" of {expected}" if expected is not None else ""
        super().__init__(f"{got}{of} bytes" + (f": {why}" if why else ""))


def _http_error(src: HubSource, where: str, e: Exception) -> Exception:
    """A one-line error for an HTTP error from huggingface_hub."""
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = src.repo_id or src.url
    login = "log in with `hf auth login` or set HF_TOKEN to a token that has access"
    if isinstance(e, GatedRepoError):
        return HubError(
            f"{repo}: gated repo, access not granted: request access on its page, then {login}"
        )
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{repo}: revision {src.revision!r} not found")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{repo}: repo not found (or private: {login})")
    if isinstance(e, RemoteEntryNotFoundError):
        return HubError(f"{where}: file not found")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return HubError(f"{where}: unauthorized (HTTP {status}): {login}")
    if status == 404 and src.repo_id is None:
        return HubError(f"{where}: file not found")
    # Not huggingface_hub's message: it holds the URL, which for a CDN redirect carries a
    # signature; the server's own message and request id are what a bug report needs.
    reason = getattr(getattr(e, "response", None), "reason_phrase", "") or ""
    text = f"{where}: HTTP error {status}" + (f" {reason}" if reason else "")
    if status in RETRIED_STATUS:
        text += f" after {RETRIES} attempts"
    server_message = getattr(e, "server_message", None)
    if server_message:
        text += f": {' '.join(str(server_message).split())}"
    request_id = getattr(e, "request_id", None)
    if request_id:
        text += f" (request id {request_id})"
    return HubError(text)


# -- headers ---------------------------------------------------------------------------------
@dataclass
class RemoteCheckpoint:
    """What :func:`open_remote` read: ``_core``'s checkpoint dict and where each shard is."""

    raw: dict[str, Any]
    shards: list[RemoteShard]
    requests: int
    bytes: int


def _first_range(names: Sequence[str]) -> int:
    """Bytes of the first request of a shard whose tensors are ``names``: enough for the
    8-byte length and a header of these entries with room to spare."""
    if not names:
        return _DEFAULT_FIRST_RANGE
    estimate = 8 + 1024 + sum(len(n) + _BYTES_PER_ENTRY for n in names)
    return max(4096, estimate + estimate // 4)


def _choose_files(src: HubSource, files: list[str]) -> tuple[Optional[str], list[str]]:
    """(index, shards) of a repo listing, as ``checkpoint.rs`` chooses in a directory."""
    folder = f"{src.folder}/" if src.folder else ""
    here = [f[len(folder) :] for f in files if f.startswith(folder) and "/" not in f[len(folder) :]]
    if "model.safetensors.index.json" in here:
        return folder + "model.safetensors.index.json", []
    indexes = sorted(f for f in here if f.endswith(".safetensors.index.json"))
    if len(indexes) == 1:
        return folder + indexes[0], []
    if len(indexes) > 1:
        raise NotACheckpointError(
            f"{src.display()}: not a safetensors checkpoint: several index files "
            f"({', '.join(indexes)}); name one with hf://{src.repo_id}/<file>"
        )
    shards = sorted(folder + f for f in here if f.endswith(".safetensors"))
    if shards:
        return None, shards
    pickles = [f for f in here if f.endswith(_PICKLE)]
    if pickles:
        raise UnsupportedFormatError(
            f"{src.display()}: the repo holds only pickle-based weights ({pickles[0]}); they are "
            "refused and never downloaded, because unpickling can run arbitrary code"
        )
    raise NotACheckpointError(
        f"{src.display()}: not a safetensors checkpoint: no *.safetensors files and no "
        "model.safetensors.index.json"
    )


def open_remote(src: HubSource, threads: Optional[int] = None) -> RemoteCheckpoint:
    """Read the headers of a remote checkpoint (see the module docs); never its data."""
    from ..report import RemoteShard

    if offline():
        where = src.display()
        raise HubError(
            f"{where}: not in the local Hugging Face cache and offline mode is on "
            "(HF_HUB_OFFLINE=1): download it once online, or unset HF_HUB_OFFLINE"
        )
    folder = f"{src.folder}/" if src.folder else ""
    file = src.file if src.url is None else src.url.rsplit("/", 1)[1]
    if file is not None and file.endswith(_PICKLE):
        raise UnsupportedFormatError(
            f"{_Http(src, {}).where(file)}: pickle-based checkpoints are refused and never "
            "downloaded"
        )
    revision = src.revision
    index_name: Optional[str] = None
    shard_names: list[str] = []
    if file is None or file.endswith(".json"):
        index_name = file or f"{folder}model.safetensors.index.json"
    else:
        shard_names = [file]
    base = f"{folder}" if src.url is None else ""
    config_name = (file.rsplit("/", 1)[0] + "/" if file and "/" in file else base) + "config.json"
    pool = _Pool()
    pool.grow(2)  # for the headers and the HTTP client; the rest start in the background below
    # The cyclic collector paused while the threads turn over httpx's objects (refcounting
    # still frees them): its passes over every live object cost the 405B's whole process
    # 30 ms of 0.95 s (median of 15 interleaved runs at load 5). Switched back on after, if it was on.
    with gc_paused():
        try:
            # huggingface_hub's headers (30 ms; a round trip more when HF_HOME has no fresh copy
            # of its agent registry) and its HTTP client (45 ms: TLS context) made side by side
            # in the pool, while this thread starts the other threads.
            pool.submit(_http_client)
            hf_headers = pool.submit(_Http.build_headers, src)
            pool.grow_in_background(MAX_PARALLEL if index_name else 2)
            http = _Http(src, hf_headers.result())
            config_future = pool.submit(_optional_get, http, config_name, revision)
            index_bytes: Optional[bytes] = None
            sha: Optional[str] = None
            if index_name is not None:
                try:
                    index_bytes, headers, _ = http.get(index_name, revision)
                    sha = headers.get("x-repo-commit")
                except HubError as e:
                    if not (file is None and "file not found" in str(e)):
                        raise
                    listing, sha = _list_repo(http)
                    index_name, shard_names = _choose_files(src, listing)
                    if index_name is not None:
                        index_bytes, _, _ = http.get(index_name, sha)
            config_bytes, config_sha = config_future.result()
            sha = sha or config_sha
            pinned = sha or revision
            weight_map: dict[str, str] = {}
            root = src.display(sha)
            index_path = f"{root}/{index_name.rsplit('/', 1)[-1]}" if index_name else None
            if index_bytes is not None:
                assert index_path is not None
                weight_map = _core.parse_index(index_bytes, index_path)
                shard_names = sorted({folder + s for s in weight_map.values()})
            pool.limit = max(2, len(shard_names))  # the background start stops there
            tensors_of: dict[str, list[str]] = {}
            for tensor, shard in weight_map.items():
                tensors_of.setdefault(folder + shard, []).append(tensor)

            def header(name: str) -> tuple[str, str, int, bytes, str]:
                url, where = http.url(name, pinned), http.where(name)
                prefix, _, total = http.fetch(
                    url, where, (0, _first_range(tensors_of.get(name, ())))
                )
                assert total is not None
                path = f"{root}/{name[len(folder) :]}"
                n = _core.header_length(prefix, total, path)
                if 8 + n > len(prefix):
                    rest, _, _ = http.fetch(url, where, (len(prefix), 8 + n))
                    prefix += rest
                return name[len(folder) :], path, total, prefix, url

            results = pool.map(header, shard_names)
        finally:
            pool.shutdown()
    config_json = config_bytes.decode("utf-8", "replace") if config_bytes is not None else None
    raw = _core.checkpoint_from_headers(
        root,
        (index_path, index_bytes) if index_path and index_bytes is not None else None,
        config_json,
        [(name, path, total, prefix) for name, path, total, prefix, _ in results],
        threads,
    )
    by_name = {name: (total, url) for name, _, total, _, url in results}
    shards = [
        RemoteShard(url=url, etag=http.etags.get(url), size=total)
        for total, url in (by_name[s["name"]] for s in raw["shards"])
    ]
    return RemoteCheckpoint(dict(raw), shards, http.requests, http.bytes)


def _http_client() -> None:
    """Make ``huggingface_hub``'s shared HTTP client (the first request would)."""
    from huggingface_hub.utils._http import get_session

    get_session()


class _Pool:
    """Worker threads started ahead of the tasks (:meth:`grow_in_background`), not one per
    submitted task as a ``ThreadPoolExecutor`` does, where each start waits for the GIL behind
    the requests already running: the 405B's 100th shard started 145 ms after its first that
    way, 80 ms with the threads started while huggingface_hub's headers and the index are on
    their way (whole process 27-37 ms faster, median of 3 × 13 interleaved runs)."""

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue[
            Optional[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]]
        ]
        self._tasks = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._grower: Optional[threading.Thread] = None
        #: Threads worth starting (lowered once the number of tasks is known).
        self.limit = MAX_PARALLEL

    def grow(self, total: int) -> None:
        """Start threads until there are ``total`` (at most :attr:`limit`)."""
        while len(self._threads) < min(total, self.limit):
            t = threading.Thread(target=self._work, name="lora_rank-hub", daemon=True)
            t.start()
            self._threads.append(t)

    def grow_in_background(self, total: int) -> None:
        """:meth:`grow` from another thread: the caller goes on (a thread start waits for the
        new thread to run)."""
        self._grower = threading.Thread(target=self.grow, args=(total,), daemon=True)
        self._grower.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._tasks.put((future, fn, args))
        return future

    def map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``fn`` of each item, in order; the first error is raised (the rest are cancelled by
        :meth:`shutdown`)."""
        return [f.result() for f in [self.submit(fn, x) for x in items]]

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            future, fn, args = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # handed to the caller by future.result()
                    future.set_exception(e)

    def shutdown(self) -> None:
        """Cancel the tasks not started, let the running ones finish, stop the threads."""
        if self._grower is not None:
            self._grower.join()
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                task[0].cancel()
        for _ in self._threads:
            self._tasks.put(None)
        for t in self._threads:
            t.join()


def _optional_get(
    http: _Http, name: str, revision: Optional[str]
) -> tuple[Optional[bytes], Optional[str]]:
    """A file that may be absent (``config.json``): (bytes or None, its commit)."""
    try:
        body, headers, _ = http.get(name, revision)
    except HubError as e:
        if "file not found" in str(e):
            return None, None
        raise
    return body, headers.get("x-repo-commit")


def _list_repo(http: _Http) -> tuple[list[str], Optional[str]]:
    """Files of the repo at the revision, and its commit: the request ``HfApi.model_info``
    makes, read by :meth:`_Http.fetch` (checked, bounded and retried as every other)."""
    import json

    from huggingface_hub import constants

    src = http.src
    revision = quote(src.revision or constants.DEFAULT_REVISION, safe="")
    url = f"{constants.ENDPOINT}/api/models/{src.repo_id or ''}/revision/{revision}"
    where = src.display()
    body, _, _ = http.fetch(url, where)
    try:
        info = json.loads(body)
        files = [str(s["rfilename"]) for s in info.get("siblings") or []]
        sha = info.get("sha")
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise HubError(f"{where}: unreadable repo listing ({type(e).__name__}: {e})") from None
    return files, sha if isinstance(sha, str) else None


# -- spectra ---------------------------------------------------------------------------------
Segment = tuple[int, int, int]
Job = tuple[str, list[Segment], int, str]


def _job_bytes(job: Job, element_size: Callable[[str], int]) -> int:
    return sum(rows for _, _, rows in job[1]) * job[2] * element_size(job[3])


def _batches(
    jobs: list[Job], element_size: Callable[[str], int], budget: int
) -> Iterator[list[int]]:
    """Consecutive runs of job indices of at most ``budget`` bytes (a larger job alone)."""
    batch: list[int] = []
    size = 0
    for i, job in enumerate(jobs):
        b = _job_bytes(job, element_size)
        if batch and size + b > budget:
            yield batch
            batch, size = [], 0
        batch.append(i)
        size += b
    if batch:
        yield batch


def remote_spectra(
    shards: list[RemoteShard],
    jobs: list[Job],
    element_sizes: Mapping[str, int],
    *,
    settings: SpectralSettings,
    progress: Optional[Callable[[int, int, str], object]],
    fetched: Optional[Callable[[int], None]] = None,
) -> list[dict[str, Any]]:
    """Spectra of ``jobs`` (as for ``_core.spectra``) on remote shards: each batch of matrices
    fetched once by range requests (contiguous ranges merged) and solved while the next batch
    is fetched. A batch of at most half of :data:`SPECTRAL_BUFFER` goes into
    ``_core.ByteBuffer``s (``_core.spectra_in_memory``), so two in flight stay within the
    buffer; a matrix larger than that is written to a temporary file (``TMPDIR``; deleted once
    solved) and read by the local engine (``_core.spectra``) panel by panel, so memory stays
    bounded for any matrix size (the page cache holds the file, as it holds local shards) and
    every byte is still fetched once. Results in job order."""
    http = _Http(HubSource(url=shards[0].url if shards else None))

    def element_size(dtype: str) -> int:
        return element_sizes.get(dtype, 1)

    for s in shards:
        if s.etag is not None:
            http.etags[s.url] = s.etag
    budget = max(SPECTRAL_BUFFER // 2, 1)
    batches = list(_batches(jobs, element_size, budget))
    results: list[Optional[dict[str, Any]]] = [None] * len(jobs)
    done = 0
    spill: list[str] = []  # the temporary directory, made when first needed

    def fetch(batch: list[int]) -> tuple[list[tuple[str, int, Any]], Optional[str], list[Job]]:
        ranges: list[tuple[int, int, int]] = []  # (shard, start, end)
        for i in batch:
            name, segs, cols, dtype = jobs[i]
            for shard, offset, rows in segs:
                ranges.append((shard, offset, offset + rows * cols * element_size(dtype)))
        ranges.sort()
        merged: list[list[int]] = []
        for shard, a, b in ranges:
            if merged and merged[-1][0] == shard and merged[-1][2] == a:
                merged[-1][2] = b
            else:
                merged.append([shard, a, b])
        buffers = []
        path = None
        if sum(b - a for _, a, b in merged) > budget:
            # To a file: the k-th range at file offset starts[k], read back by the engine.
            fd, path = tempfile.mkstemp(prefix="lora_rank-", suffix=".part", dir=spill[0])
            starts, pos = [], 0
            try:
                for shard, a, b in merged:
                    _pwrite_all(fd, pos, http, shards[shard].url, (a, b))
                    if fetched is not None:
                        fetched(b - a)
                    starts.append(pos)
                    pos += b - a
            finally:
                os.close(fd)
        else:
            for shard, a, b in merged:
                buf = _core.ByteBuffer(b - a)
                s = shards[shard]
                http.fetch(s.url, s.url, (a, b), sink=buf.write)
                if fetched is not None:
                    fetched(b - a)
                buffers.append((s.url, a, buf))
        local_jobs: list[Job] = []
        for i in batch:
            name, segs, cols, dtype = jobs[i]
            new: list[Segment] = []
            for shard, offset, rows in segs:
                k = next(
                    k for k, (sh, a, b) in enumerate(merged) if sh == shard and a <= offset < b
                )
                if path is None:
                    new.append((k, offset, rows))
                else:
                    new.append((0, starts[k] + offset - merged[k][1], rows))
            local_jobs.append((name, new, cols, dtype))
        return buffers, path, local_jobs

    with contextlib.ExitStack() as stack:
        if any(sum(_job_bytes(jobs[i], element_size) for i in b) > budget for b in batches):
            spill.append(stack.enter_context(tempfile.TemporaryDirectory(prefix="lora_rank-")))
        prefetcher = stack.enter_context(ThreadPoolExecutor(max_workers=1))
        pending = prefetcher.submit(fetch, batches[0]) if batches else None
        for n, batch in enumerate(batches):
            assert pending is not None
            buffers, path, local_jobs = pending.result()
            # The next batch is fetched while this one is solved: in memory both stay within
            # SPECTRAL_BUFFER (each at most half of it); a larger one is in a file.
            nxt = batches[n + 1] if n + 1 < len(batches) else None
            pending = prefetcher.submit(fetch, nxt) if nxt is not None else None

            def report(k: int, total: int, name: str, base: int = done) -> None:
                if progress is not None:
                    progress(base + k, len(jobs), name)

            if path is None:
                out = _core.spectra_in_memory(buffers, local_jobs, settings, progress=report)
            else:
                size = os.path.getsize(path)
                try:
                    out = _core.spectra([(path, size)], local_jobs, settings, progress=report)
                finally:
                    os.unlink(path)
            del buffers
            for i, d in zip(batch, out):
                results[i] = dict(d)
            done += len(batch)
    return [r for r in results if r is not None]


def _pwrite_all(fd: int, at: int, http: _Http, url: str, byte_range: tuple[int, int]) -> None:
    """Fetch ``byte_range`` of ``url`` into file ``fd`` at offset ``at`` (a retried attempt
    writes over the same bytes)."""

    def sink(offset: int, chunk: bytes) -> None:
        view = memoryview(chunk)
        where = at + offset
        while view:
            written = os.pwrite(fd, view, where)
            view, where = view[written:], where + written

    http.fetch(url, url, byte_range, sink=sink)


def open_source(
    source: str, revision: Optional[str] = None, threads: Optional[int] = None
) -> Checkpoint:
    """The checkpoint at a local path, in a cached hub snapshot or on the hub (its
    ``remote_shards`` say where; None when read locally).

    Example:
        >>> import lora_rank
        >>> ckpt = open_source(str(lora_rank.demo_checkpoint()))
        >>> len(ckpt.shards), ckpt.remote_shards
        (1, None)
    """
    src = parse_source(source, revision)
    if src is None:
        if revision is not None:
            raise HubError(f"{source}: revision= applies to hub repos, not to local paths")
        return open_local(source, threads)
    cached = cached_snapshot(src)
    if cached is not None:
        try:
            return open_local(cached, threads)
        except FileNotFoundError:
            if offline():
                raise HubError(
                    f"{src.display()}: the cached snapshot {cached} is incomplete and offline "
                    "mode is on (HF_HUB_OFFLINE=1)"
                ) from None
    remote = open_remote(src, threads)
    return Checkpoint.from_core(remote.raw, remote.shards)
