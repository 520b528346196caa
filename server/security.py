"""Who may talk to the server: loopback by default, CURVE with an allow-list otherwise.

Follows pyzmq's ``examples/security/ironhouse.py``: the server has a key pair, every client has
one, and the server accepts only clients whose public key is in its allow-list folder. Keys are
made by ``nstudio keys --out DIR``::

    DIR/server.key, DIR/server.key_secret    the server's pair (give clients server.key)
    DIR/client.key, DIR/client.key_secret    a client pair
    DIR/authorized_clients/client.key        the allow-list: public keys of accepted clients

``nstudio serve --curve-dir DIR`` reads ``DIR/server.key_secret`` and
``DIR/authorized_clients/``.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger(__name__)

ALLOWED_DIR = "authorized_clients"


class SecurityError(Exception):
    """Security set-up that cannot go ahead (message says what to do)."""


@dataclass(frozen=True)
class CurveKeys:
    public: bytes
    secret: bytes
    allowed_dir: Path


def is_local(endpoint: str) -> bool:
    """True for ``ipc://``/``inproc://`` and TCP endpoints bound to a loopback address."""
    scheme, _, rest = endpoint.partition("://")
    if scheme in ("ipc", "inproc"):
        return True
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "*", an interface name or a host name: not provably local
        return False


def load_keys(curve_dir: str | Path) -> CurveKeys:
    """Read the server's key pair and check the client allow-list exists.

    Raises:
        SecurityError: a file or folder is missing or unreadable, naming it.
    """
    folder = Path(curve_dir)
    secret_file = folder / "server.key_secret"
    allowed = folder / ALLOWED_DIR
    if not secret_file.is_file():
        raise SecurityError(f"CURVE: server secret key {secret_file} not found; make keys with "
                            f"`nstudio keys --out {folder}`")
    if not allowed.is_dir() or not any(allowed.glob("*.key")):
        raise SecurityError(f"CURVE: no client public keys (*.key) in {allowed}; copy each "
                            "client's public key there")
    try:
        public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as error:
        raise SecurityError(f"CURVE: cannot read {secret_file}: {error}") from None
    if not secret:
        raise SecurityError(f"CURVE: {secret_file} holds no secret key")
    return CurveKeys(public=public, secret=secret, allowed_dir=allowed)


def secure(context: zmq.Context, socket: zmq.Socket, keys: CurveKeys) -> ThreadAuthenticator:
    """Make ``socket`` a CURVE server that admits only the allow-listed clients.

    Returns:
        The running authenticator; stop it when the socket closes.
    """
    auth = ThreadAuthenticator(context)
    auth.start()
    auth.configure_curve(domain="*", location=str(keys.allowed_dir))
    socket.curve_secretkey = keys.secret
    socket.curve_publickey = keys.public
    socket.curve_server = True
    log.info("CURVE on: clients allowed from %s", keys.allowed_dir)
    return auth


KEY_FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret",
             f"{ALLOWED_DIR}/client.key")


def create_keys(out_dir: str | Path, force: bool = False) -> dict[str, Path]:
    """Make a server and a client key pair, and allow the client (``nstudio keys``).

    Args:
        out_dir: the folder to write to.
        force: replace keys already there (every client holding the old ones is locked out).

    Returns:
        name -> path of every file written.

    Raises:
        SecurityError: keys exist in ``out_dir`` and ``force`` is False (nothing is written).
    """
    folder = Path(out_dir)
    existing = [name for name in KEY_FILES if (folder / name).exists()]
    if existing and not force:
        raise SecurityError(f"{folder} already holds keys ({', '.join(existing)}); replacing "
                            "them locks out every client that has the old ones. Pass --force "
                            "to replace them, or choose another --out folder")
    folder.mkdir(parents=True, exist_ok=True)
    allowed = folder / ALLOWED_DIR
    allowed.mkdir(exist_ok=True)
    server_public, server_secret = zmq.auth.create_certificates(folder, "server")
    client_public, client_secret = zmq.auth.create_certificates(folder, "client")
    Path(server_secret).chmod(0o600)
    Path(client_secret).chmod(0o600)
    allowed_client = allowed / "client.key"
    shutil.copyfile(client_public, allowed_client)
    return {
        "server public": Path(server_public), "server secret": Path(server_secret),
        "client public": Path(client_public), "client secret": Path(client_secret),
        "allowed client": allowed_client,
    }
