"""Talking to a running exporter's write API: what ``proctree-exporter roots`` sends.

The API is served on a Unix socket (``api.write.socket``: root and the listed
uids may write) and, for the basic-auth users of ``api.write.users``, on the
exporter's TCP port. The standard library's ``http.client`` speaks HTTP/1.1
only over TCP: :class:`UnixHTTPConnection` is the small subclass that opens an
``AF_UNIX`` socket instead, everything else (request line, headers, chunked
bodies) staying the library's. One command does not justify a dependency
beside those README lists, and an HTTP client that speaks over Unix sockets
(requests-unixsocket, httpx) would be one.

:class:`ControlClient` sends one request per connection and turns the answer
into a JSON document or an :class:`ApiError` carrying the server's ``error``
and ``key``; a connection that cannot be made is an :class:`Unreachable` that
names the socket or URL and the OS error.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import __version__
from .remote import Target

DEFAULT_SOCKET = "/run/proctree-exporter/api.sock"
MAX_BODY_BYTES = 256 << 20  # a root's document with a million members fits


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix domain socket; requests carry ``Host: localhost``."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        """Open the Unix socket (``http.client`` would open a TCP one)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Unreachable(Exception):
    """No answer: the connection could not be made, or broke, or the answer took too long.
    ``refused`` is set when the OS said the caller may not connect (a socket's mode)."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class ApiError(Exception):
    """The exporter answered with an error status: ``{"error": ..., "key": ...}``."""

    def __init__(self, status: int, error: str, key: str | None = None) -> None:
        # the key is said once: most errors name it already ("max_depth: ...")
        super().__init__(f"{error} (key: {key})" if key and key not in error else error)
        self.status = status
        self.error = error
        self.key = key


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer: its status (200, 201) and its JSON document."""

    status: int
    doc: Any


def basic_credentials(url: str, environ: Mapping[str, str] = os.environ
                      ) -> tuple[str, str] | None:
    """The (user, password) to send with ``url``: the user of ``USER[:PASSWORD]@`` in the
    URL, else ``PROCTREE_USER``; the password from ``PROCTREE_PASSWORD``, else from the
    URL. None without a user. ValueError when there is a user and no password."""
    parts = urllib.parse.urlsplit(url)
    user = (urllib.parse.unquote(parts.username) if parts.username is not None
            else environ.get("PROCTREE_USER") or None)
    if user is None:
        return None
    password = environ.get("PROCTREE_PASSWORD")
    if password is None and parts.password is not None:
        password = urllib.parse.unquote(parts.password)
    if password is None:
        raise ValueError(f"user {user!r} but no password: set PROCTREE_PASSWORD")
    return user, password


class ControlClient:
    """Requests to one exporter's API, over its Unix socket or its HTTP(S) address.

    Make one with :meth:`unix` or :meth:`http`. Each request opens its own connection:
    the commands send one or two, and a kill may keep the server busy for its grace
    period, longer than a server keeps an idle connection open.
    """

    def __init__(self, shown: str, *, socket_path: str | None = None,
                 target: Target | None = None, timeout: float = 30.0) -> None:
        if (socket_path is None) == (target is None):
            raise ValueError("give exactly one of a socket path and an HTTP target")
        self.shown = shown  # the socket path or the URL without credentials, for messages
        self.socket_path = socket_path
        self.target = target
        self.timeout = timeout

    @property
    def sends_credentials(self) -> bool:
        """Whether requests carry basic-auth credentials."""
        return self.target is not None and self.target.authorization is not None

    @classmethod
    def unix(cls, path: str, *, timeout: float = 30.0) -> ControlClient:
        """The API on the Unix socket at ``path``."""
        return cls(path, socket_path=path, timeout=timeout)

    @classmethod
    def http(cls, url: str, *, ca_file: str | None = None, insecure: bool = False,
             timeout: float = 30.0, environ: Mapping[str, str] = os.environ) -> ControlClient:
        """The API at ``http[s]://[USER[:PASSWORD]@]HOST:PORT[/PREFIX]``, with the
        credentials of :func:`basic_credentials`. ValueError says what is wrong."""
        creds = basic_credentials(url, environ)
        parts = urllib.parse.urlsplit(url)
        bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        target = Target.from_url(bare, ca_file=ca_file, insecure=insecure, environ={})
        if creds is not None:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode("ascii")
            target = dataclasses.replace(target, authorization=f"Basic {token}")
        return cls(target.shown, target=target, timeout=timeout)

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.socket_path is not None:
            return UnixHTTPConnection(self.socket_path, timeout)
        assert self.target is not None
        return self.target.connection(timeout)

    def _headers(self, **extra: str) -> dict[str, str]:
        if self.target is not None:
            return self.target.headers(**extra)
        return {"User-Agent": f"proctree-exporter/{__version__}", **extra}

    def _hint(self, exc: OSError) -> str:
        if self.socket_path is None:
            return "is the exporter running there?"
        if isinstance(exc, PermissionError):
            return "the socket is for root and the uids of api.write.uids"
        return "is the exporter running with api.write.socket set?"

    def request(self, method: str, path: str, query: Mapping[str, str] | None = None,
                body: Any = None, *, timeout: float | None = None) -> Reply:
        """``method`` on ``path`` (under the URL's prefix), ``body`` sent as JSON.
        ApiError for a status of 400 and above; Unreachable when there is no answer."""
        prefix = self.target.prefix if self.target is not None else ""
        target = prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        headers = self._headers(Accept="application/json")
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        wait = self.timeout if timeout is None else timeout
        conn = self._connection(wait)
        try:
            try:
                conn.connect()
            except OSError as exc:
                raise Unreachable(f"cannot connect to {self.shown}: {_why(exc, wait)}; "
                                  f"{self._hint(exc)}",
                                  refused=isinstance(exc, PermissionError)) from None
            try:
                conn.request(method, target, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read(MAX_BODY_BYTES + 1)
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(f"no answer from {self.shown} to {method} {path}: "
                                  f"{_why(exc, wait)}") from None
        finally:
            conn.close()
        if len(raw) > MAX_BODY_BYTES:
            raise Unreachable(f"{self.shown}: an answer beyond {MAX_BODY_BYTES} bytes")
        if resp.status >= 400:
            raise _api_error(resp.status, resp.reason, raw)
        try:
            doc = json.loads(raw) if raw.strip() else None
        except ValueError:
            raise ApiError(resp.status, f"{method} {path}: not JSON: {raw[:100]!r}") from None
        return Reply(resp.status, doc)

    # -- the write API's resources ------------------------------------------------------

    def roots(self) -> Reply:
        """``GET /api/v1/roots``: every root, without its members."""
        return self.request("GET", "/api/v1/roots")

    def root(self, name: str) -> Reply:
        """``GET /api/v1/roots/NAME``: one root with its members."""
        return self.request("GET", _root_path(name))

    def put_root(self, name: str, spec: Mapping[str, Any]) -> Reply:
        """``PUT /api/v1/roots/NAME``: add a root (201), or find it there identical (200)."""
        return self.request("PUT", _root_path(name), body=dict(spec))

    def delete_root(self, name: str, *, kill: bool = False,
                    grace_seconds: float | None = None) -> Reply:
        """``DELETE /api/v1/roots/NAME``: stop watching a root, killing its tree first
        with ``kill``."""
        query = {"kill": "true"} if kill else {}
        if grace_seconds is not None:
            query["grace_seconds"] = _number(grace_seconds)
        return self.request("DELETE", _root_path(name), query,
                            timeout=self._kill_timeout(grace_seconds) if kill else None)

    def kill_root(self, name: str, *, grace_seconds: float | None = None) -> Reply:
        """``POST /api/v1/roots/NAME/kill``: end every live member of a root."""
        query = {} if grace_seconds is None else {"grace_seconds": _number(grace_seconds)}
        return self.request("POST", _root_path(name) + "/kill", query,
                            timeout=self._kill_timeout(grace_seconds))

    def kill_process(self, name: str, pid: int, start_ticks: int, *,
                     grace_seconds: float | None = None) -> Reply:
        """``POST /api/v1/roots/NAME/processes/PID/kill``: end one member (and only if it is
        still the process that started at ``start_ticks``)."""
        query = {"start_ticks": str(start_ticks)}
        if grace_seconds is not None:
            query["grace_seconds"] = _number(grace_seconds)
        return self.request("POST", f"{_root_path(name)}/processes/{pid}/kill", query,
                            timeout=self._kill_timeout(grace_seconds))

    def _kill_timeout(self, grace_seconds: float | None) -> float:
        # the server answers a kill when its grace period is over: wait at least that long
        return max(self.timeout, (grace_seconds or 0.0) + 10.0)


def _root_path(name: str) -> str:
    return "/api/v1/roots/" + urllib.parse.quote(name, safe="")


def _number(value: float) -> str:
    return f"{value:g}"


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _api_error(status: int, reason: str, raw: bytes) -> ApiError:
    """The server's ``{"error", "key"}``; for a plain-text answer (a 401 or 429 from the
    authentication in front of the API), its text, or the status's reason phrase."""
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        key = doc.get("key")
        return ApiError(status, doc["error"], key if isinstance(key, str) and key else None)
    text = raw.decode("utf-8", "replace").strip()[:200]
    return ApiError(status, text or f"{status} {reason}")
