"""Bearer tokens: where they come from and how a request is checked.

Every change needs ``Authorization: Bearer <token>``; reads are open unless the site file
says ``api: {read_token: true}``. Tokens come from ``gridshare serve --api-token-file FILE``
(one per line; blank lines and ``#`` comments ignored) and the ``GRIDSHARE_API_TOKEN``
environment variable. With none configured, every change is refused (403) with a detail
that says how to configure one. Tokens are compared in constant time, every configured
token each time, and never logged.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from fastapi import Request

from gridshare.api.problems import Problem

TOKEN_ENV = "GRIDSHARE_API_TOKEN"
MAX_TOKEN_FILE_BYTES = 1024 * 1024
HOW_TO_CONFIGURE = ("start gridshare serve with --api-token-file FILE (one token per line) "
                    f"or set {TOKEN_ENV}")
NO_TOKEN_DETAIL = f"no API token is configured, so changes are refused: {HOW_TO_CONFIGURE}"


class TokenFileError(ValueError):
    """The token file cannot be read or holds no token."""


def read_token_file(path: Path) -> list[str]:
    """The tokens of a token file: one per line, blank lines and ``#`` lines ignored."""
    try:
        if path.stat().st_size > MAX_TOKEN_FILE_BYTES:
            raise TokenFileError(f"{path}: larger than {MAX_TOKEN_FILE_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TokenFileError(f"{path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise TokenFileError(f"{path}: not UTF-8 text") from exc
    tokens = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line):
            raise TokenFileError(f"{path}:{number}: a token cannot contain spaces")
        tokens.append(line)
    if not tokens:
        raise TokenFileError(f"{path}: no token in it (one per line)")
    return tokens


def load_tokens(path: Path | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Tokens from the file (if given) and from ``GRIDSHARE_API_TOKEN`` (if set)."""
    env = os.environ if environ is None else environ
    tokens = read_token_file(path) if path is not None else []
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        tokens.append(from_env)
    return tuple(dict.fromkeys(tokens))


class Auth:
    """Checks requests against the configured tokens."""

    def __init__(self, tokens: Iterable[str], *, read_token: bool = False) -> None:
        self._tokens = tuple(t.encode() for t in tokens if t)
        self.read_token = read_token

    @property
    def configured(self) -> bool:
        return bool(self._tokens)

    def valid(self, token: str | None) -> bool:
        if not token or not self._tokens:
            return False
        given = token.encode()
        ok = False
        for known in self._tokens:  # every token, whatever matched: no timing clue
            ok |= hmac.compare_digest(given, known)
        return ok

    @staticmethod
    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None
        return value.strip()

    def require_write(self, request: Request) -> None:
        """A change: a valid bearer token in the Authorization header, nothing else."""
        if not self.configured:
            raise Problem(403, NO_TOKEN_DETAIL, kind="no-token-configured")
        self._check(self.bearer(request))

    def require_read(self, request: Request) -> None:
        """A read: open, unless ``api: {read_token: true}``; then a valid token in the
        header, or in ``?access_token=`` (browsers' EventSource cannot send headers)."""
        if not self.read_token:
            return
        if not self.configured:
            raise Problem(403, "api.read_token is true but no API token is configured, so "
                          f"reads are refused: {HOW_TO_CONFIGURE}", kind="no-token-configured")
        self._check(self.bearer(request) or request.query_params.get("access_token"))

    def _check(self, token: str | None) -> None:
        if token is None:
            raise Problem(401, "an Authorization: Bearer <token> header is needed",
                          kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})
        if not self.valid(token):
            raise Problem(401, "the bearer token is not valid", kind="unauthorized",
                          headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
