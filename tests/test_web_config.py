"""The web config file: promtool agrees on what is valid, real TLS handshakes, basic auth.

Certificates are made at test time with the openssl command line tool (the venv has no
`cryptography`); servers listen on 127.0.0.1 only and are stopped in finally blocks.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from proctree_exporter.web_config import WebConfig, WebConfigError, load_web_config

from .conftest import wait_for

# --- certificates -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    server_crt: Path
    server_key: Path
    client_crt: Path
    client_key: Path
    other_key: Path  # a key that belongs to no certificate here
    encrypted_key: Path  # server_key under a passphrase


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _key(name: str, cwd: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", name, cwd=cwd)


def _signed(name: str, cn: str, ext: str, cwd: Path) -> None:
    _key(f"{name}.key", cwd)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr",
             cwd=cwd)
    (cwd / f"{name}.ext").write_text(ext)
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
             cwd=cwd)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A throwaway CA, a server cert for 127.0.0.1/localhost and a client cert."""
    d = tmp_path_factory.mktemp("pki")
    _key("ca.key", d)
    _openssl("req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=proctree test CA",
             "-days", "2", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", "ca.crt", cwd=d)
    _signed("server", "localhost", "basicConstraints=CA:FALSE\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n", d)
    _signed("client", "scraper", "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n", d)
    _key("other.key", d)
    _openssl("pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret",
             "-out", "encrypted.key", cwd=d)
    return Pki(d, d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
               d / "client.key", d / "other.key", d / "encrypted.key")


def write_config(pki: Pki, name: str, text: str) -> Path:
    """A web config next to the certificates, so relative paths in it name them."""
    path = pki.dir / name
    path.write_text(text)
    return path


# --- promtool as the oracle ---------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool is not on PATH: `scripts/bootstrap test` installs it "
                    "(Debian's prometheus package)")
    return exe


def promtool_accepts(promtool: str, path: Path) -> bool:
    # Run from / so relative paths in the file must resolve against the file's directory.
    r = subprocess.run([promtool, "check", "web-config", str(path)], cwd="/",
                       capture_output=True, text=True, timeout=60)
    return r.returncode == 0


HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()

VALID = {
    "empty": "",
    "empty_sections": "tls_server_config:\nhttp_server_config:\nbasic_auth_users:\n",
    "tls": "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n",
    "mtls": (
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: ca.crt\n"
        "  min_version: TLS13\n"
    ),
    "tls_tuned": (
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: server.key\n"
        "  client_auth_type: VerifyClientCertIfGiven\n"
        "  client_ca_file: ca.crt\n"
        "  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
        "  curve_preferences: [CurveP256]\n"
        "  prefer_server_cipher_suites: false\n"
    ),
    "auth_and_headers": (
        f"basic_auth_users:\n  alice: '{HASH}'\n  bob: '{HASH.replace('$2b$', '$2y$')}'\n"
        "http_server_config:\n"
        "  http2: false\n"
        "  headers:\n"
        "    X-Frame-Options: deny\n"
        "    X-Content-Type-Options: nosniff\n"
        "    X-XSS-Protection: 0\n"
        "    Content-Security-Policy: \"default-src 'none'\"\n"
        "    Strict-Transport-Security: ''\n"
    ),
}

TLS_HEAD = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

# name -> (file, what our message must contain). promtool rejects every one of these.
INVALID = {
    "unknown_top_key": ("basic_auth_users: {}\nbogus: 1\n", "bogus, line 2: unknown key"),
    "unknown_tls_key": (TLS_HEAD + "  cert_fiel: x\n", "tls_server_config.cert_fiel, line 4"),
    "unsupported_newer_key": (TLS_HEAD + "  client_allowed_sans: [a]\n",
                              "client_allowed_sans, line 4: unknown key (not supported"),
    "cert_without_key": ("tls_server_config:\n  cert_file: server.crt\n",
                         "tls_server_config.key_file, line 1: required"),
    "key_without_cert": ("tls_server_config:\n  key_file: server.key\n",
                         "tls_server_config.cert_file, line 1: required"),
    "empty_cert_file": ("tls_server_config:\n  cert_file: ''\n  key_file: server.key\n",
                        "tls_server_config.cert_file, line 2"),
    "bad_client_auth_type": (TLS_HEAD + "  client_auth_type: Sometimes\n",
                             "tls_server_config.client_auth_type, line 4: Input should be"),
    "bad_min_version": (TLS_HEAD + "  min_version: TLS14\n",
                        "tls_server_config.min_version, line 4"),
    "ca_without_client_auth": (TLS_HEAD + "  client_ca_file: ca.crt\n",
                               "tls_server_config.client_ca_file, line 4: set without"),
    "missing_cert_file": ("tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n",
                          "tls_server_config.cert_file, line 2: cannot read"),
    "missing_client_ca_file": (TLS_HEAD + "  client_auth_type: RequireAndVerifyClientCert\n"
                               "  client_ca_file: nope.crt\n",
                               "tls_server_config.client_ca_file, line 5: cannot read"),
    "mismatched_key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
                       "tls_server_config.key_file, line 3: "),
    "encrypted_key": ("tls_server_config:\n  cert_file: server.crt\n  key_file: encrypted.key\n",
                      "tls_server_config.key_file, line 3: "),
    "key_as_cert": ("tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n",
                    "tls_server_config.cert_file, line 2: no PEM certificate"),
    "unknown_cipher": (TLS_HEAD + "  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
                       "tls_server_config.cipher_suites.0, line 4: unknown cipher suite"),
    "unknown_curve": (TLS_HEAD + "  curve_preferences: [CurveP999]\n",
                      "tls_server_config.curve_preferences.0, line 4: unknown curve"),
    "not_a_bcrypt_hash": ("basic_auth_users:\n  alice: hunter2\n",
                          "basic_auth_users.alice, line 2: not a bcrypt hash"),
    "bcrypt_cost_too_low": (f"basic_auth_users:\n  alice: '{HASH.replace('$04$', '$03$')}'\n",
                            "basic_auth_users.alice, line 2: bcrypt cost 3"),
    "user_without_hash": ("basic_auth_users:\n  alice:\n", "basic_auth_users.alice, line 2"),
    "duplicate_user": (f"basic_auth_users:\n  alice: '{HASH}'\n  alice: '{HASH}'\n",
                       "basic_auth_users.alice, line 3: duplicate key"),
    "header_not_allowed": ("http_server_config:\n  headers:\n    X-Powered-By: me\n",
                           "http_server_config.headers.X-Powered-By, line 3: header"),
    "header_name_case": ("http_server_config:\n  headers:\n    x-frame-options: deny\n",
                         "http_server_config.headers.x-frame-options, line 3"),
    "header_value_not_allowed": ("http_server_config:\n  headers:\n    X-Frame-Options: DENY\n",
                                 "http_server_config.headers.X-Frame-Options, line 3: "
                                 "expected one of deny, sameorigin"),
    "http2_as_string": ("http_server_config:\n  http2: 'yes'\n",
                        "http_server_config.http2, line 2"),
    "top_level_list": ("- tls_server_config\n", "the top level must be a mapping"),
    "not_yaml": ("tls_server_config: [\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_web_config_is_accepted_like_promtool(pki: Pki, promtool: str, name: str) -> None:
    path = write_config(pki, f"valid_{name}.yml", VALID[name])
    assert promtool_accepts(promtool, path), f"promtool rejects the {name} example"
    load_web_config(path)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_web_config_is_rejected_like_promtool(pki: Pki, promtool: str,
                                                      name: str) -> None:
    text, expected = INVALID[name]
    path = write_config(pki, f"invalid_{name}.yml", text)
    assert not promtool_accepts(promtool, path), f"promtool accepts the {name} example"
    with pytest.raises(WebConfigError) as err:
        load_web_config(path)
    assert str(err.value).startswith(f"{path}: ")
    assert expected in str(err.value)


# promtool (exporter-toolkit) accepts these; here they are refused because Python's ssl
# cannot do what they ask, or because they can only be mistakes.
STRICTER = {
    "request_client_cert_unsupported": (
        TLS_HEAD + "  client_auth_type: RequireAnyClientCert\n",
        "client_auth_type, line 4: RequireAnyClientCert is not supported"),
    "verify_needs_ca": (TLS_HEAD + "  client_auth_type: RequireAndVerifyClientCert\n",
                        "tls_server_config.client_ca_file, line 1: required"),
    "tls_keys_without_cert": ("tls_server_config:\n  min_version: TLS13\n",
                              "tls_server_config.cert_file, line 1: required"),
    "min_above_max": (TLS_HEAD + "  min_version: TLS13\n  max_version: TLS12\n",
                      "tls_server_config.min_version, line 4: TLS13 is above"),
    "several_curves": (TLS_HEAD + "  curve_preferences: [X25519, CurveP256]\n",
                       "tls_server_config.curve_preferences, line 4: Python's ssl"),
    "ca_file_without_certs": (TLS_HEAD + "  client_auth_type: VerifyClientCertIfGiven\n"
                              "  client_ca_file: server.key\n",
                              "tls_server_config.client_ca_file, line 5: no PEM certificate"),
    "user_with_colon": (f"basic_auth_users:\n  'al:ice': '{HASH}'\n",
                        "basic_auth_users.al:ice, line 2: a user name must not contain ':'"),
}


@pytest.mark.parametrize("name", sorted(STRICTER))
def test_settings_python_cannot_honour_are_refused(pki: Pki, name: str) -> None:
    text, expected = STRICTER[name]
    path = write_config(pki, f"stricter_{name}.yml", text)
    with pytest.raises(WebConfigError, match="^" + str(path)) as err:
        load_web_config(path)
    assert expected in str(err.value)


def test_no_web_config_means_no_tls_and_no_auth() -> None:
    for path in (None, ""):
        cfg = load_web_config(path)
        assert cfg.tls is None and cfg.ssl_context() is None
        assert not cfg.auth_required() and cfg.check_basic_auth(None)
        assert dict(cfg.headers) == {}


def test_unreadable_web_config_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError, match=r"nope\.yml: cannot read"):
        load_web_config(tmp_path / "nope.yml")


def test_paths_are_relative_to_the_web_config_file(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, "relative.yml", VALID["mtls"]))
    assert cfg.tls is not None
    assert cfg.tls.cert_file == pki.server_crt and cfg.tls.client_ca_file == pki.ca


def test_headers_are_kept_and_blank_ones_unset(pki: Pki) -> None:
    cfg = load_web_config(write_config(pki, "headers.yml", VALID["auth_and_headers"]))
    assert dict(cfg.headers) == {
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "X-XSS-Protection": "0",
        "Content-Security-Policy": "default-src 'none'",
    }
    assert cfg.auth_required()


# --- real TLS handshakes ------------------------------------------------------------------


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        peer = self.request.getpeercert()
        cn = dict(x[0] for x in peer["subject"]).get("commonName", "") if peer else ""
        body = f"hello {cn or 'anonymous'}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


class _TLSServer(ThreadingHTTPServer):
    """HTTPS on 127.0.0.1; the handshake runs in the request's thread, failures are kept."""

    daemon_threads = True

    def __init__(self, ctx: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Hello)
        self.ctx = ctx
        self.handshake_errors: list[ssl.SSLError] = []

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except ssl.SSLError as exc:
            self.handshake_errors.append(exc)
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()


@pytest.fixture
def serve() -> Iterator[Any]:
    """serve(cfg) starts an HTTPS server with cfg.ssl_context(); all are stopped at the end."""
    started: list[tuple[_TLSServer, threading.Thread]] = []

    def start(cfg: WebConfig) -> _TLSServer:
        ctx = cfg.ssl_context()
        assert ctx is not None
        server = _TLSServer(ctx)
        thread = threading.Thread(target=server.serve_forever, name="tls-test-server")
        thread.start()
        started.append((server, thread))
        return server

    try:
        yield start
    finally:
        for server, thread in started:
            server.shutdown()
            server.server_close()
            thread.join(timeout=10)


def client_context(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.client_crt, pki.client_key)
    return ctx


def get(server: _TLSServer, ctx: ssl.SSLContext) -> str:
    """GET / over HTTPS to 127.0.0.1 (checked against the certificate's IP SAN)."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.server_address[1], context=ctx,
                                       timeout=10)
    try:
        conn.request("GET", "/")
        resp = conn.getresponse()
        assert resp.status == 200
        return resp.read().decode()
    finally:
        conn.close()


def test_tls_handshake_with_a_client_that_trusts_the_ca(pki: Pki, serve: Any) -> None:
    server = serve(load_web_config(write_config(pki, "tls.yml", VALID["tls"])))
    assert get(server, client_context(pki)) == "hello anonymous"
    # The DNS name too, still connecting to 127.0.0.1 only.
    with client_context(pki).wrap_socket(
            socket.create_connection(server.server_address, timeout=10),
            server_hostname="localhost") as s:
        assert s.version() == "TLSv1.3"


def test_require_and_verify_client_cert(pki: Pki, serve: Any) -> None:
    server = serve(load_web_config(write_config(pki, "mtls.yml", VALID["mtls"])))
    # TLS 1.3: the client finishes its side first and learns of the refusal on its first read.
    with pytest.raises(OSError):
        get(server, client_context(pki))
    # The server records the failure after sending its alert: wait for it.
    errors = wait_for(lambda: list(server.handshake_errors))
    assert "CERTIFICATE" in str(errors[0]), errors
    assert get(server, client_context(pki, with_cert=True)) == "hello scraper"


def test_verify_client_cert_if_given(pki: Pki, serve: Any) -> None:
    server = serve(load_web_config(write_config(pki, "optional.yml", VALID["tls_tuned"])))
    assert get(server, client_context(pki)) == "hello anonymous"
    assert get(server, client_context(pki, with_cert=True)) == "hello scraper"


def test_cipher_suites_and_curve_are_applied(pki: Pki, serve: Any) -> None:
    server = serve(load_web_config(write_config(pki, "tuned.yml", VALID["tls_tuned"])))
    ctx = client_context(pki)
    raw = socket.create_connection(server.server_address, timeout=10)
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        assert s.version() == "TLSv1.2"
        assert s.cipher()[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
    p384_only = client_context(pki)
    p384_only.set_ecdh_curve("secp384r1")  # the server allows P-256 only
    with pytest.raises(ssl.SSLError):
        get(server, p384_only)


def test_min_version_tls13_refuses_a_tls12_client(pki: Pki, serve: Any) -> None:
    server = serve(load_web_config(write_config(pki, "tls13.yml", VALID["mtls"])))
    ctx = client_context(pki, with_cert=True)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        get(server, ctx)
    assert get(server, client_context(pki, with_cert=True)) == "hello scraper"


# --- basic auth ---------------------------------------------------------------------------


def basic(user: str | bytes, password: str | bytes) -> str:
    raw = (user if isinstance(user, bytes) else user.encode()) + b":" + (
        password if isinstance(password, bytes) else password.encode())
    return "Basic " + base64.b64encode(raw).decode()


@pytest.fixture
def auth() -> WebConfig:
    return WebConfig(basic_auth_users={"alice": HASH.encode()})


def test_no_users_means_every_request_passes() -> None:
    cfg = WebConfig()
    assert not cfg.auth_required()
    assert cfg.check_basic_auth(None) and cfg.check_basic_auth("Basic garbage")


@pytest.mark.parametrize("header", [
    None,
    "",
    basic("alice", "wrong"),
    basic("mallory", "s3cret"),
    basic("alice", "s3cret" + "x" * 80),  # over bcrypt's 72 bytes
    "Basic !!!not base64!!!",
    "Basic " + base64.b64encode(b"alice s3cret").decode(),  # no colon
    "Bearer " + base64.b64encode(b"alice:s3cret").decode(),
    "Basic",
    "Basic é",
    basic(b"\xffalice", "s3cret"),  # not UTF-8
], ids=["none", "empty", "wrong_password", "unknown_user", "long_password", "not_base64",
        "no_colon", "wrong_scheme", "no_credentials", "non_ascii", "not_utf8"])
def test_bad_credentials_are_refused_without_raising(auth: WebConfig, header: str | None) -> None:
    assert auth.auth_required()
    assert auth.check_basic_auth(header) is False
    assert auth.cache_hits == 0


def test_right_password_passes_and_is_cached(auth: WebConfig) -> None:
    header = basic("alice", "s3cret")
    assert auth.check_basic_auth(header) is True
    assert auth.cache_hits == 0
    assert auth.check_basic_auth(header) is True
    assert auth.cache_hits == 1
    assert auth.check_basic_auth("basic " + header.split()[1]) is True  # scheme is caseless
    assert auth.check_basic_auth(basic("alice", "wrong")) is False  # failures are not cached
    assert auth.cache_hits == 2


def test_concurrent_logins_pay_for_one_bcrypt(auth: WebConfig) -> None:
    header = basic("alice", "s3cret")
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(auth.check_basic_auth, [header] * 32))
    assert all(results)
    assert auth.cache_hits == 31


def test_users_hashed_at_different_costs_are_warned_of(tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    cheap = bcrypt.hashpw(b"a", bcrypt.gensalt(rounds=4)).decode()
    dear = bcrypt.hashpw(b"b", bcrypt.gensalt(rounds=5)).decode()
    mixed = tmp_path / "mixed.yml"
    mixed.write_text(f"basic_auth_users:\n  ann: {cheap}\n  bob: {dear}\n")
    same = tmp_path / "same.yml"
    same.write_text(f"basic_auth_users:\n  ann: {cheap}\n  cy: {cheap}\n")
    with caplog.at_level("WARNING", logger="proctree_exporter.web_config"):
        load_web_config(same)
        assert not caplog.records
        load_web_config(mixed)
    (record,) = caplog.records
    assert "different bcrypt costs" in record.getMessage()
    assert record.fields["costs"] == "4,5"  # type: ignore[attr-defined]
