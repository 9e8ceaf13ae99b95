"""CURVE for the runtime: key files, the server's allow-list of client keys, admin keys, the client's keys.

Key files are ZeroMQ's own certificate format (`NAME.key` public, `NAME.key_secret` secret, z85 text), so
keys made by other ZeroMQ tools work too. The server checks clients with a ZAP authenticator running in its
own thread: a client whose public key is not in the allow-list never completes the handshake, so it gets no
reply at all (it cannot even be told no). An admin key is an allowed client key that may also send admin
commands; the server reads the key of each message's connection from the message's ``User-Id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from dualhrq.config import CurveConfig
from dualhrq.errors import ConfigurationError

log = logging.getLogger(__name__)


def generate_keys(out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public: give it to the other side) and NAME.key_secret (keep it); return both paths.
    NAME is a plain file name: one with a path in it would put the keys outside ``out_dir``, and one starting
    with a dot (or empty) would make them hidden files."""
    if not name or name.startswith(".") or any(c in name for c in ("/", "\\", "\0")):
        raise ConfigurationError(f"--name: {name!r}: expected a plain file name (not empty, not starting with a dot, "
                                 "no path separators), e.g. server or gateway-1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for suffix in (".key", ".key_secret"):
        if (out / f"{name}{suffix}").exists():
            raise ConfigurationError(f"{out / (name + suffix)}: exists; refusing to overwrite a key")
    public, secret = zmq.auth.create_certificates(out, name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_keypair(secret_file: str | Path, what: str) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a `.key_secret` file; `what` names the config field in errors."""
    path = Path(secret_file)
    if not path.is_file():
        raise ConfigurationError(f"{what}: {path} not found")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (ValueError, OSError) as e:
        raise ConfigurationError(f"{what}: {path} is not a ZeroMQ certificate: {e}") from None
    if secret is None:
        raise ConfigurationError(f"{what}: {path} holds no secret key (give the .key_secret file)")
    return public, secret


def load_public_key(key_file: str | Path, what: str) -> bytes:
    path = Path(key_file)
    if not path.is_file():
        raise ConfigurationError(f"{what}: {path} not found")
    try:
        return zmq.auth.load_certificate(path)[0]
    except (ValueError, OSError) as e:
        raise ConfigurationError(f"{what}: {path} is not a ZeroMQ certificate: {e}") from None


def load_public_keys(directory: str | Path, what: str) -> set[bytes]:
    """The public keys of every .key file in `directory` (the files ZeroMQ's authenticator reads there); a file
    that is not a certificate is a ConfigurationError naming it."""
    path = Path(directory)
    if not path.is_dir():
        raise ConfigurationError(f"{what}: {path} is not a directory of .key files")
    return {load_public_key(f, what) for f in sorted(path.glob("*.key"))}


class CurveServer:
    """The server half: secret key on the socket, ZAP allow-list, admin keys. Inactive when not configured."""

    def __init__(self, cfg: CurveConfig) -> None:
        self.enabled = bool(cfg.server_secret_key_file)
        self.admin_keys: frozenset[str] = frozenset()
        self._cfg = cfg
        self._auth: ThreadAuthenticator | None = None
        if not self.enabled:
            if cfg.allowed_clients_dir or cfg.admin_keys_dir:
                raise ConfigurationError("serve.curve.server_secret_key_file: required when allowed_clients_dir or "
                                         "admin_keys_dir is set (CURVE is off without it)")
            return
        if not cfg.allowed_clients_dir:
            raise ConfigurationError("serve.curve.allowed_clients_dir: required with CURVE (an empty allow-list "
                                     "would refuse every client)")
        self.public, self._secret = load_keypair(cfg.server_secret_key_file, "serve.curve.server_secret_key_file")
        allowed = load_public_keys(cfg.allowed_clients_dir, "serve.curve.allowed_clients_dir")
        if cfg.admin_keys_dir:
            admin = load_public_keys(cfg.admin_keys_dir, "serve.curve.admin_keys_dir")
            if not admin <= allowed:
                log.warning("admin keys not in serve.curve.allowed_clients_dir cannot connect at all")
            self.admin_keys = frozenset(k.decode() for k in admin)
        log.info("CURVE on: %d allowed client keys, %d admin keys", len(allowed), len(self.admin_keys))

    def secure(self, context: zmq.Context, socket: zmq.Socket) -> None:
        """Before bind: start the authenticator on `context` and make `socket` a CURVE server."""
        if not self.enabled:
            return
        self._auth = ThreadAuthenticator(context)
        self._auth.start()
        self._auth.configure_curve(domain="*", location=self._cfg.allowed_clients_dir)
        socket.curve_secretkey = self._secret
        socket.curve_publickey = self.public
        socket.curve_server = True

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


@dataclass(frozen=True)
class ClientKeys:
    """The client half: the server's public key and this client's own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_files(cls, server_public_file: str | Path, client_secret_file: str | Path) -> ClientKeys:
        public, secret = load_keypair(client_secret_file, "client secret key")
        return cls(load_public_key(server_public_file, "server public key"), public, secret)

    def apply(self, socket: zmq.Socket) -> None:
        socket.curve_serverkey = self.server_public
        socket.curve_publickey = self.public
        socket.curve_secretkey = self.secret
