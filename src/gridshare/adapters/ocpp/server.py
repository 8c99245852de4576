"""Who may connect, and speaking which OCPP version: the WebSocket handshake of the CSMS.

Chargers are authenticated before the upgrade (security profiles 0-3), the charger id is
the last path segment of the URL (percent-decoded: many chargers put a prefix before it),
and the subprotocol picks the version. A charger that offers no subprotocol at all (many
real ones) is served as ``CsmsConfig.no_subprotocol``; one that offers only versions we do
not speak gets the handshake completed and then a 1002 close, as OCPP-J prefers to HTTP 400.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http
import logging
import secrets
from collections.abc import Callable, Sequence

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import InvalidHeader
from websockets.headers import build_www_authenticate_basic, parse_authorization_basic
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gridshare.events import EventCounters
from gridshare.ocpp_version import OcppVersion

from .auth import charger_id_from_path, common_name, hash_password, verify_password
from .config import ChargerCredentials, CsmsConfig

LOG = logging.getLogger("gridshare.ocpp")

_REALM = "gridshare OCPP"
_SUBPROTOCOL_HEADER = "Sec-WebSocket-Protocol"
_REFUSALS = {  # reason code -> the words of the refusal log line
    "auth_bad_charger_id": "no valid charger id in the path",
    "auth_cn_mismatch": "client certificate does not name this charger",
    "auth_unknown_charger": "unknown charger id",
    "auth_missing": "no basic-auth credentials",
    "auth_malformed": "credentials are not basic auth",
    "auth_username_mismatch": "basic-auth user is not the charger id",
    "auth_bad_password": "wrong password",
    "pending_full": "unknown charger id, and the list of pending chargers is full",
}


class Gatekeeper:
    """The handshake hooks for ``websockets.serve`` and the version of each connection."""

    def __init__(self, config: CsmsConfig, counters: EventCounters, *,
                 pending_room: Callable[[str], bool] | None = None) -> None:
        """``pending_room(id)``: whether an unknown id may still be held pending
        (``config.pending_unknown``); None: never."""
        self.config = config
        self._pending_room = pending_room
        self.counters = counters
        self.credentials: dict[str, ChargerCredentials] = dict(config.chargers)
        self._auth_key = secrets.token_bytes(32)
        self._auth_cache: dict[str, bytes] = {}
        self._registering: dict[str, asyncio.Lock] = {}

    # --- subprotocol and version ---------------------------------------------------------

    def select_subprotocol(self, connection: ServerConnection,
                           offered: Sequence[Subprotocol]) -> Subprotocol | None:
        """The first of our subprotocols the charger offers; None completes the handshake
        without the header (see :meth:`version_of`)."""
        for protocol in self.config.subprotocols:
            if protocol in offered:
                return Subprotocol(protocol)
        return None

    def version_of(self, ws: ServerConnection) -> OcppVersion | None:
        """The version to speak on an open connection; None: close it with 1002."""
        if ws.subprotocol is not None:
            return OcppVersion(ws.subprotocol)
        offered = ws.request.headers.get_all(_SUBPROTOCOL_HEADER) if ws.request else []
        if not offered and self.config.no_subprotocol is not None:
            return OcppVersion(self.config.no_subprotocol)
        return None

    # --- authentication ------------------------------------------------------------------

    def _refuse(self, connection: ServerConnection, status: http.HTTPStatus, reason: str,
                text: str, *, challenge: bool = False) -> Response:
        self.counters.reject(reason)
        path = connection.request.path if connection.request is not None else ""
        charger = charger_id_from_path(path)
        who = f"charger {charger!r}" if charger else f"a connection to {path[:80]!r}"
        peer = connection.remote_address
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        # one line an installer can act on: which id, from where, why (and what it was told)
        LOG.warning("refused %s from %s: %s (%d)", who, where,
                    _REFUSALS.get(reason, reason), status.value,
                    extra={"charger": charger, "reason": reason})
        response = connection.respond(status, text + "\n")
        if challenge:
            response.headers["WWW-Authenticate"] = build_www_authenticate_basic(_REALM)
        return response

    async def process_request(self, connection: ServerConnection,
                              request: Request) -> Response | None:
        """None lets the upgrade go ahead; a Response refuses it."""
        cfg = self.config
        charger = charger_id_from_path(request.path)
        if charger is None:
            return self._refuse(connection, http.HTTPStatus.NOT_FOUND, "auth_bad_charger_id",
                                "No valid charger id in the path")
        known = charger in self.credentials
        if cfg.security_profile in (1, 2):
            return await self._check_basic_auth(connection, request.headers, charger, known)
        if cfg.security_profile == 3:
            cn = common_name(connection.transport.get_extra_info("peercert"))
            if cn != charger:
                return self._refuse(connection, http.HTTPStatus.FORBIDDEN, "auth_cn_mismatch",
                                    "Client certificate does not name this charger")
        if not known:
            if cfg.pending_unknown:
                return self._pending(connection, charger)
            if not cfg.allow_auto_register:
                return self._refuse(connection, http.HTTPStatus.NOT_FOUND,
                                    "auth_unknown_charger", "Unknown charger")
            self.credentials[charger] = ChargerCredentials()
            LOG.info("auto-registered charger %s", charger)
        return None

    async def _check_basic_auth(self, connection: ServerConnection, headers: Headers,
                                charger: str, known: bool) -> Response | None:
        unauthorized = http.HTTPStatus.UNAUTHORIZED
        try:
            username, password = parse_authorization_basic(headers["Authorization"])
        except KeyError:
            return self._refuse(connection, unauthorized, "auth_missing", "Missing credentials",
                                challenge=True)
        except InvalidHeader:
            return self._refuse(connection, unauthorized, "auth_malformed",
                                "Unsupported credentials", challenge=True)
        if username != charger:
            return self._refuse(connection, unauthorized, "auth_username_mismatch",
                                "Invalid credentials", challenge=True)
        if not known and self.config.pending_unknown:
            # No password to check it against: held pending, never trusted. Declaring it
            # closes this connection, and it must come back with the declared password.
            return self._pending(connection, charger)
        if not known:
            if not self.config.allow_auto_register:
                return self._refuse(connection, unauthorized, "auth_unknown_charger",
                                    "Invalid credentials", challenge=True)
            # Trust on first use: pin the first password this id presents.
            lock = self._registering.setdefault(charger, asyncio.Lock())
            async with lock:
                if charger not in self.credentials:
                    hashed = await asyncio.to_thread(hash_password, password)
                    self.credentials[charger] = ChargerCredentials(hashed)
                    self._remember_password(charger, password)
                    LOG.info("auto-registered charger %s (password pinned)", charger)
                    return None
        if not await self._password_ok(charger, password):
            return self._refuse(connection, unauthorized, "auth_bad_password",
                                "Invalid credentials", challenge=True)
        return None

    def _pending(self, connection: ServerConnection, charger: str) -> Response | None:
        """An unknown id that passed every check its security profile allows: let it in
        as pending when the registry has room for it."""
        if self._pending_room is not None and self._pending_room(charger):
            return None
        return self._refuse(connection, http.HTTPStatus.NOT_FOUND, "pending_full",
                            "Unknown charger")

    def declared(self, charger: str) -> bool:
        """Whether ``charger`` is declared (or auto-registered): not pending."""
        return charger in self.credentials

    def _password_digest(self, password: str) -> bytes:
        return hmac.new(self._auth_key, password.encode(errors="surrogateescape"),
                        hashlib.sha256).digest()

    def _remember_password(self, charger: str, password: str) -> None:
        self._auth_cache[charger] = self._password_digest(password)

    async def _password_ok(self, charger: str, password: str) -> bool:
        """scrypt in a worker thread (it would stall every charger for ~50 ms); the last good
        password is remembered as a keyed HMAC so a reconnect storm costs no scrypt."""
        cached = self._auth_cache.get(charger)
        if cached is not None and hmac.compare_digest(cached, self._password_digest(password)):
            return True
        hashed = self.credentials[charger].password_hash
        if hashed is None:
            LOG.error("charger %s has no password hash but security profile %s needs one",
                      charger, self.config.security_profile)
            return False
        if await asyncio.to_thread(verify_password, password, hashed):
            self._remember_password(charger, password)
            return True
        return False
