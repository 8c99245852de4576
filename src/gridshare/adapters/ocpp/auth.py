"""Charger authentication: password hashes, the TLS context and the charger id in the URL.

Security profiles (OCPP security whitepaper / 2.0.1 part 2, A00): 1 = HTTP Basic over plain
WebSocket, 2 = Basic over TLS, 3 = mutual TLS where the certificate CN names the charger.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
from typing import Any
from urllib.parse import unquote

from .config import TlsConfig

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_DKLEN = 32
_MAX_SCRYPT_N = 2**20
"""Refuse absurd parameters from a hash string so a bad config cannot stall the process."""

CHARGER_ID_RE = re.compile(r"^[A-Za-z0-9*\-_=:+|@.]{1,48}$")
"""OCPP 2.0.1 identity: at most 48 characters from this set (1.6 chargers use a subset)."""


def hash_password(password: str) -> str:
    """Salted scrypt hash, self-describing: ``scrypt$n$r$p$salt_b64$hash_b64``.

    Slow on purpose (about 16 MiB and tens of ms) so a leaked config does not leak passwords.
    """
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R,
                            p=_SCRYPT_P, dklen=_SCRYPT_DKLEN)
    return "$".join(("scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()))


def verify_password(password: str, hashed: str) -> bool:
    """Constant-time check of ``password`` against a :func:`hash_password` string.

    A malformed hash is a failed check, never an exception: the caller answers 401 either way.
    """
    try:
        scheme, n_s, r_s, p_s, salt_b64, digest_b64 = hashed.split("$")
        n, r, p = int(n_s), int(r_s), int(p_s)
        salt = base64.b64decode(salt_b64, validate=True)
        expected = base64.b64decode(digest_b64, validate=True)
    except (ValueError, binascii.Error):
        return False
    if scheme != "scrypt" or not (1 < n <= _MAX_SCRYPT_N) or r < 1 or p < 1 or not expected:
        return False
    try:
        digest = hashlib.scrypt(password.encode(errors="surrogateescape"), salt=salt, n=n,
                                r=r, p=p, dklen=len(expected), maxmem=256 * n * r * p + 2**20)
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(digest, expected)


def charger_id_from_path(path: str) -> str | None:
    """The charger id is the last, URL-decoded path segment (``ws://host/ocpp/<id>``).

    None when it is missing or has characters OCPP does not allow in an identity.
    """
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    try:
        segment = unquote(path.rsplit("/", 1)[-1], errors="strict") if path else ""
    except UnicodeDecodeError:
        return None
    return segment if CHARGER_ID_RE.match(segment) else None


def server_ssl_context(tls: TlsConfig, *, require_client_cert: bool) -> ssl.SSLContext:
    """TLS 1.2+ server context; with ``require_client_cert`` the client must present a
    certificate signed by ``tls.cafile`` (profile 3)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(tls.certfile), str(tls.keyfile))
    if require_client_cert:
        if tls.cafile is None:
            raise ValueError("mutual TLS needs a cafile")
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=str(tls.cafile))
    return ctx


def common_name(peercert: Any) -> str | None:
    """The subject CN of a certificate as returned by ``SSLObject.getpeercert()``."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
