"""The web config file (``--web.config.file``): TLS, basic auth and extra response headers.

The format is the Prometheus exporter-toolkit one
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md), so a
file written for node_exporter works here and ``promtool check web-config`` checks it.
Everything is validated at load, certificates and keys included: a bad file is a
:class:`WebConfigError` naming the file, the key and, where it can, the line.

Where Python's ``ssl`` module cannot do what Go's ``crypto/tls`` does, the setting is
rejected with a message saying so; nothing is accepted and silently ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
import secrets
import ssl
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import bcrypt
from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError

from .yamlfile import line_of, load_mapping

log = logging.getLogger(__name__)


class WebConfigError(ValueError):
    """A web config that cannot be used; the message names file, key and line."""


# --- the file's shape ---------------------------------------------------------------------

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# Go's tls.CipherSuites() (the ones exporter-toolkit accepts) -> OpenSSL names.
# None: a TLS 1.3 suite. Go does not let those be configured and ignores them in the list;
# OpenSSL's cipher list does not cover them either, so they have no effect here too.
_CIPHERS: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}

_CURVES = {"CurveP256": "prime256v1", "CurveP384": "secp384r1",
           "CurveP521": "secp521r1", "X25519": "X25519"}

# The only headers exporter-toolkit lets a web config set, and the values it allows
# (empty: any value). Names match exactly, as in Go.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

# Sent on every response unless the web config sets the same header: the page works
# under this policy (no inline script or style), and nothing here is meant to be framed.
DEFAULT_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "deny",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
}

# Keys newer exporter-toolkit releases know but this exporter does not implement: say so
# instead of "unknown key", which would look like a typo.
_NOT_IMPLEMENTED: dict[tuple[str, ...], str] = {
    ("tls_server_config", "cert"): "inline PEM is not supported, use cert_file",
    ("tls_server_config", "key"): "inline PEM is not supported, use key_file",
    ("tls_server_config", "client_ca"): "inline PEM is not supported, use client_ca_file",
    ("tls_server_config", "client_allowed_sans"): "not supported by proctree-exporter",
    ("rate_limit",): "not supported by proctree-exporter",
}

_BCRYPT_HASH = re.compile(r"\$2[abxy]\$(\d\d)\$[./A-Za-z0-9]{53}")

# "" means NoClientCert and RequireClientCert is RequireAnyClientCert's old name, in Go too.
ClientAuthType = Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                         "VerifyClientCertIfGiven", "RequireAndVerifyClientCert",
                         "RequireClientCert", ""]


class _Strict(BaseModel):
    # Numbers become strings like Go's YAML decoder does (``X-XSS-Protection: 0``);
    # booleans stay strict (StrictBool) because Go rejects ``http2: "yes"``.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class _TLSServerFile(_Strict):
    cert_file: str = ""
    key_file: str = ""
    client_auth_type: ClientAuthType = "NoClientCert"
    client_ca_file: str = ""
    min_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS12"
    max_version: Literal["TLS10", "TLS11", "TLS12", "TLS13"] = "TLS13"
    cipher_suites: list[str] | None = None
    curve_preferences: list[str] | None = None
    prefer_server_cipher_suites: StrictBool = True


class _HTTPServerFile(_Strict):
    http2: StrictBool = True  # accepted for compatibility; the Python server speaks HTTP/1.1
    headers: dict[str, str] | None = None


class _WebConfigFile(_Strict):
    tls_server_config: _TLSServerFile | None = None
    http_server_config: _HTTPServerFile | None = None
    basic_auth_users: dict[str, str] | None = None


Problem = tuple[tuple[Any, ...], str]  # (key path, message)


def _tls_problems(t: _TLSServerFile) -> list[Problem]:
    """What pydantic cannot see: keys that need each other, and Python ssl's limits."""
    out: list[Problem] = []
    if not t.model_fields_set:
        return out  # an empty section means no TLS, as in exporter-toolkit
    # exporter-toolkit serves plain HTTP when only e.g. min_version is set; refuse instead,
    # since whoever wrote a tls_server_config meant TLS.
    if not t.cert_file:
        out.append((("cert_file",), "required with the other tls_server_config keys"))
    if not t.key_file:
        out.append((("key_file",), "required with the other tls_server_config keys"))
    auth = t.client_auth_type
    if auth in ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert"):
        out.append((("client_auth_type",),
                    f"{auth} is not supported: Python's ssl module cannot ask for a client "
                    "certificate without verifying it; use VerifyClientCertIfGiven or "
                    "RequireAndVerifyClientCert with client_ca_file"))
    elif auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        if not t.client_ca_file:
            out.append((("client_ca_file",), f"required with client_auth_type {auth}"))
    elif t.client_ca_file:
        out.append((("client_ca_file",),
                    "set without a client_auth_type that checks client certificates"))
    if _TLS_VERSIONS[t.min_version] > _TLS_VERSIONS[t.max_version]:
        out.append((("min_version",), f"{t.min_version} is above max_version {t.max_version}"))
    for i, name in enumerate(t.cipher_suites or ()):
        if name not in _CIPHERS:
            out.append((("cipher_suites", i), f"unknown cipher suite {name!r} (Go names from "
                        "tls.CipherSuites(), e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)"))
    curves = t.curve_preferences or []
    for i, name in enumerate(curves):
        if name not in _CURVES:
            out.append((("curve_preferences", i),
                        f"unknown curve {name!r} (one of {', '.join(_CURVES)})"))
    if len(curves) > 1:
        out.append((("curve_preferences",),
                    "Python's ssl module can restrict the key exchange to one curve only: "
                    "give a single curve, or leave it out for OpenSSL's default order"))
    return [(("tls_server_config", *loc), msg) for loc, msg in out]


def _header_problems(headers: Mapping[str, str]) -> list[Problem]:
    out: list[Problem] = []
    for name, value in headers.items():
        loc = ("http_server_config", "headers", name)
        if name not in _HEADERS:
            out.append((loc, f"header {name!r} can not be configured (one of "
                             f"{', '.join(_HEADERS)})"))
        elif _HEADERS[name] and value not in _HEADERS[name]:
            out.append((loc, f"expected one of {', '.join(_HEADERS[name])}, got {value!r}"))
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            out.append((loc, "control characters are not allowed in a header value"))
    return out


def _user_problems(users: Mapping[str, str]) -> list[Problem]:
    out: list[Problem] = []
    for user, hashed in users.items():
        loc = ("basic_auth_users", user)
        m = _BCRYPT_HASH.fullmatch(hashed)
        # The hash is a secret: messages describe it, never quote it.
        if m is None:
            out.append((loc, "not a bcrypt hash ($2y$, $2b$ or $2a$, cost, then 53 characters; "
                             "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"))
        elif not 4 <= int(m.group(1)) <= 31:
            out.append((loc, f"bcrypt cost {int(m.group(1))} is outside 4..31"))
        if ":" in user:
            # Basic auth splits user and password at the first colon: this user could never
            # log in. exporter-toolkit accepts it; a user who cannot log in is a mistake.
            out.append((loc, "a user name must not contain ':'"))
    return out


# --- the result ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TLSConfig:
    """``tls_server_config`` resolved: absolute paths and values Python's ssl understands.

    client_auth_type is one of:

    - ``NoClientCert``: no client certificate is asked for.
    - ``VerifyClientCertIfGiven``: ``CERT_OPTIONAL``; a certificate, if sent, must chain to
      client_ca_file.
    - ``RequireAndVerifyClientCert``: ``CERT_REQUIRED``; it must be sent and chain to
      client_ca_file.

    exporter-toolkit's ``RequestClientCert`` and ``RequireAnyClientCert`` ask for a
    certificate without verifying it. Python's ssl module cannot do that (it verifies any
    certificate it asks for), and mapping them to a verifying mode would refuse clients
    exporter-toolkit lets in, so they are rejected at load with a message naming the
    alternatives. The verifying modes require client_ca_file (Go would fall back to the
    system roots, which is rarely what anyone wants for client certificates).

    TLS10 and TLS11 are passed to OpenSSL, whose security level (Debian's default: 2) may
    still refuse them. curve_preferences allows one curve (``set_ecdh_curve``); in TLS 1.2
    OpenSSL then also refuses ECDSA client certificates on any other curve.
    """

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None  # an OpenSSL cipher list; None: OpenSSL's default
    curve: str | None = None  # the one ECDH group allowed; None: OpenSSL's default list
    prefer_server_cipher_suites: bool = True
    source: str = field(default="<web config>", compare=False)
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def _error(self, key: str, msg: str) -> WebConfigError:
        line = self.lines.get(key)
        where = f", line {line}" if line is not None else ""
        return WebConfigError(f"{self.source}: tls_server_config.{key}{where}: {msg}")

    def _read(self, key: str, path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise self._error(key, f"cannot read {path}: {exc.strerror}") from None

    def context(self) -> ssl.SSLContext:
        """A new server-side context, reading the files again (so renewed certs are used)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = self.min_version
        ctx.maximum_version = self.max_version
        if self.prefer_server_cipher_suites:
            ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.ciphers:
            try:
                ctx.set_ciphers(self.ciphers)
            except ssl.SSLError:
                raise self._error("cipher_suites", "none of these cipher suites is available "
                                  "in this OpenSSL") from None
        if self.curve:
            ctx.set_ecdh_curve(self.curve)

        # Read both files first: OpenSSL's own errors ("PEM lib") do not say which file.
        cert = self._read("cert_file", self.cert_file)
        key = self._read("key_file", self.key_file)
        if b"-----BEGIN CERTIFICATE-----" not in cert:
            raise self._error("cert_file", f"no PEM certificate in {self.cert_file}")
        if b"PRIVATE KEY-----" not in key:
            raise self._error("key_file", f"no PEM private key in {self.key_file}")

        def no_passphrase() -> bytes:
            # Without this OpenSSL would prompt on the terminal and block the daemon.
            raise self._error("key_file", f"{self.key_file} is encrypted; the web config has "
                              "no passphrase setting (exporter-toolkit cannot read it either)")

        try:
            ctx.load_cert_chain(self.cert_file, self.key_file, password=no_passphrase)
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise self._error("key_file", f"{self.key_file} is not the key of the "
                                  f"certificate in cert_file {self.cert_file}") from None
            raise self._error("cert_file", f"cannot load {self.cert_file} with key_file "
                              f"{self.key_file}: {exc.reason or exc}") from None

        if self.client_auth_type != "NoClientCert" and self.client_ca_file is not None:
            if b"-----BEGIN CERTIFICATE-----" not in self._read("client_ca_file",
                                                                self.client_ca_file):
                raise self._error("client_ca_file", f"no PEM certificate in {self.client_ca_file}")
            try:
                ctx.load_verify_locations(cafile=self.client_ca_file)
            except ssl.SSLError as exc:
                raise self._error("client_ca_file", f"cannot load {self.client_ca_file}: "
                                  f"{exc.reason or exc}") from None
            ctx.verify_mode = (ssl.CERT_REQUIRED
                               if self.client_auth_type == "RequireAndVerifyClientCert"
                               else ssl.CERT_OPTIONAL)
        return ctx


class AuthBusy(Exception):
    """Too many password checks are waiting for bcrypt: answer 429 now, do not queue."""


class _AuthCache:
    """Recent successful logins, so a scrape every few seconds doesn't pay bcrypt each time.

    Only successes are kept: failed guesses then cannot push valid entries out. Entries are
    keyed by an HMAC under a per-process random key, so the cache holds nothing that helps
    an offline guess at a password.
    """

    MAX_ENTRIES = 1024
    MAX_QUEUED = 4

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        # One bcrypt at a time, as exporter-toolkit does: a flood of bad logins then burns
        # one core, not all of them.
        self.bcrypt_lock = threading.Lock()
        # Checks queued for it (running included): beyond MAX_QUEUED a check is refused at
        # once (AuthBusy), so a flood of bad logins cannot tie up every HTTP worker and
        # leave health checks and cached logins waiting behind bcrypt.
        self.queued = 0
        self.refused = 0
        # logins being checked now: the same login arriving meanwhile waits for that
        # answer (it needs no bcrypt of its own, and takes no place in line)
        self.pending: dict[bytes, threading.Event] = {}
        self.hits = 0

    def key(self, user: str, password: bytes, hashed: bytes) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in (user.encode(), password, hashed):
            mac.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguous joins
            mac.update(part)
        return mac.digest()

    def hit(self, key: bytes) -> bool:
        with self._lock:
            if key not in self._entries:
                return False
            self._entries.move_to_end(key)
            self.hits += 1
            return True

    def add(self, key: bytes) -> None:
        with self._lock:
            self._entries[key] = None
            self._entries.move_to_end(key)
            while len(self._entries) > self.MAX_ENTRIES:
                self._entries.popitem(last=False)


def _dummy_hash(hashes: Iterable[bytes]) -> bytes:
    """A well-formed hash at the highest configured cost, checked for unknown users.

    bcrypt does the full work whatever the salt, so this costs as much as a real user's
    check, and the response time does not tell which user names exist.
    """
    cost = max((int(h[4:6]) for h in hashes), default=4)
    return b"$2b$%02d$" % cost + b"." * 53


def _parse_basic(header: str | None) -> tuple[str, bytes] | None:
    """``Basic base64(user:password)`` -> (user, password); None when malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = raw.partition(b":")
    if not colon:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None  # configured names are text: no such user can exist


@dataclass(frozen=True, slots=True)
class WebConfig:
    """A loaded web config: TLS settings, basic auth users and extra response headers."""

    tls: TLSConfig | None = None
    basic_auth_users: Mapping[str, bytes] = field(default_factory=dict)  # user -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=dict)
    _cache: _AuthCache = field(default_factory=_AuthCache, init=False, repr=False,
                               compare=False)
    _dummy: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dummy", _dummy_hash(self.basic_auth_users.values()))

    def ssl_context(self) -> ssl.SSLContext | None:
        """A new server-side SSL context, or None when the config has no TLS.

        Raises :class:`WebConfigError` if a certificate or key can no longer be loaded.
        """
        return self.tls.context() if self.tls is not None else None

    def response_headers(self) -> list[tuple[str, str]]:
        """The headers every response carries: the safe defaults, overridden by (and
        joined with) those the web config sets."""
        merged = {**DEFAULT_HEADERS, **self.headers}
        return list(merged.items())

    def auth_required(self) -> bool:
        """Whether requests need basic auth (some users are configured)."""
        return bool(self.basic_auth_users)

    @property
    def cache_hits(self) -> int:
        """How many checks were answered from the cache of successful logins."""
        return self._cache.hits

    def check_basic_auth(self, authorization_header: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may pass.

        True when no users are configured, or the header is ``Basic base64(user:password)``
        for a configured user and the password matches. Never raises on a malformed header;
        raises :class:`AuthBusy` when a login not seen before would have to queue behind
        more than ``MAX_QUEUED`` password checks. Safe to call from many threads at once.
        """
        if not self.basic_auth_users:
            return True
        creds = _parse_basic(authorization_header)
        if creds is None:
            return False
        user, password = creds
        stored = self.basic_auth_users.get(user)
        hashed = stored if stored is not None else self._dummy
        cache = self._cache
        key = cache.key(user, password, hashed)
        if cache.hit(key):
            return True
        with cache._lock:
            pending = cache.pending.get(key)
            if pending is None:
                if cache.queued >= cache.MAX_QUEUED:
                    cache.refused += 1
                    raise AuthBusy("too many password checks at once")
                cache.queued += 1
                cache.pending[key] = done = threading.Event()
        if pending is not None:  # the same login is being checked: its answer is ours
            pending.wait(60)
            return cache.hit(key)  # only successes are cached: a miss is a failure
        try:
            return self._check_slowly(key, stored, hashed, password)
        finally:
            with cache._lock:
                cache.queued -= 1
                del cache.pending[key]
            done.set()

    def user_of(self, authorization_header: str | None) -> str | None:
        """The user a ``Basic`` header names, once :meth:`check_basic_auth` passed it;
        None without users configured (nobody logged in) or without the header."""
        if not self.basic_auth_users:
            return None
        creds = _parse_basic(authorization_header)
        return creds[0] if creds is not None else None

    def _check_slowly(self, key: bytes, stored: bytes | None, hashed: bytes,
                      password: bytes) -> bool:
        with self._cache.bcrypt_lock:
            # Look again: a thread that held the lock may have just checked the same login,
            # so concurrent first scrapes pay for one bcrypt, not one each.
            if self._cache.hit(key):
                return True
            try:
                ok = bcrypt.checkpw(password, hashed)
            except ValueError:  # e.g. a password over bcrypt's 72 bytes
                ok = False
            ok = ok and stored is not None
            if ok:
                self._cache.add(key)
        return ok


# --- loading ------------------------------------------------------------------------------


def _format(source: str, lines: Mapping[tuple[Any, ...], int], problems: list[Problem]) -> str:
    msgs = []
    for loc, msg in problems:
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = line_of(lines, loc)
        where = f", line {line}" if line is not None else ""
        msgs.append(f"{key}{where}: {msg}")
    return f"{source}: " + "; ".join(msgs)


def _join(base_dir: Path, name: str) -> Path:
    # Relative paths are relative to the web config file, as in exporter-toolkit.
    return (base_dir / name).absolute()


def _parse(text: str, source: str, base_dir: Path) -> WebConfig:
    data, lines = load_mapping(text, source, WebConfigError)

    try:
        doc = _WebConfigFile.model_validate(data)
    except ValidationError as exc:
        problems: list[Problem] = []
        for err in exc.errors():
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                hint = _NOT_IMPLEMENTED.get(tuple(map(str, err["loc"])))
                msg = f"unknown key ({hint})" if hint else "unknown key"
            problems.append((tuple(err["loc"]), msg))
        raise WebConfigError(_format(source, lines, problems)) from None

    t = doc.tls_server_config or _TLSServerFile()
    http = doc.http_server_config or _HTTPServerFile()
    users = doc.basic_auth_users or {}
    headers = http.headers or {}
    problems = _tls_problems(t) + _header_problems(headers) + _user_problems(users)
    if problems:
        raise WebConfigError(_format(source, lines, problems))
    costs = {int(m.group(1)) for m in map(_BCRYPT_HASH.fullmatch, users.values()) if m}
    if len(costs) > 1:
        # a wrong password costs what its user's hash costs: with mixed costs, the time
        # of a failed login tells which user names exist
        log.warning("basic_auth_users hashed at different bcrypt costs: failed logins "
                    "take different times per user, which can reveal user names; hash "
                    "them all at one cost", extra={"fields": {
                        "source": source, "costs": ",".join(map(str, sorted(costs)))}})

    tls = None
    if t.model_fields_set:
        ciphers = [c for c in (_CIPHERS[n] for n in t.cipher_suites or ()) if c]
        tls = TLSConfig(
            cert_file=_join(base_dir, t.cert_file),
            key_file=_join(base_dir, t.key_file),
            client_auth_type=t.client_auth_type or "NoClientCert",
            client_ca_file=_join(base_dir, t.client_ca_file) if t.client_ca_file else None,
            min_version=_TLS_VERSIONS[t.min_version],
            max_version=_TLS_VERSIONS[t.max_version],
            ciphers=":".join(ciphers) or None,
            curve=_CURVES[t.curve_preferences[0]] if t.curve_preferences else None,
            prefer_server_cipher_suites=t.prefer_server_cipher_suites,
            source=source,
            lines={k[1]: n for k, n in lines.items()
                   if len(k) == 2 and k[0] == "tls_server_config"},
        )
        tls.context()  # load certificates and keys now, so a bad one stops the daemon at start
    return WebConfig(
        tls=tls,
        basic_auth_users=MappingProxyType({u: h.encode() for u, h in users.items()}),
        # "Unset if blank", as exporter-toolkit documents.
        headers=MappingProxyType({k: v for k, v in headers.items() if v}),
    )


def load_web_config(path: str | os.PathLike[str] | None) -> WebConfig:
    """Load and check a web config file; None or "" gives no TLS and no auth.

    Raises :class:`WebConfigError` naming the file, key and line of the first problems.
    """
    if path is None or os.fspath(path) == "":
        return WebConfig()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise WebConfigError(f"{p}: not UTF-8 text") from None
    return _parse(text, str(p), p.parent)
