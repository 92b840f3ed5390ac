"""Who is calling: the tenant behind a bearer token (`MEMSCORE_AUTH_TOKENS`), behind an mTLS
client certificate (`MEMSCORE_TLS_CLIENT_CA`), or nobody in particular.

The token file holds one line per token, `TENANT SHA256_HEX_OF_TOKEN`: the server never keeps a
token itself, compares digests in constant time over every line, and re-reads the file when it
changes (a rotated Kubernetes Secret takes effect without a restart). Tokens are never logged
and no error quotes one.

Without tokens or client certificates every caller is the one tenant `DEFAULT_TENANT`; that is
only allowed on a loopback address (the default of `memscore up`), or on purpose behind a proxy
that authenticates (`MEMSCORE_ALLOW_UNAUTHENTICATED`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import re
import threading
from dataclasses import dataclass

from .errors import Unauthenticated
from .store.jobs import DEFAULT_TENANT, TENANT

log = logging.getLogger("memscore.auth")

__all__ = ["DEFAULT_TENANT", "TENANT", "Authenticator", "TokenFile", "authenticator_from_settings", "token_digest"]
_DIGEST = re.compile(r"[0-9a-f]{64}")
MAX_TOKEN_CHARS = 4096


class TokenFileError(ValueError):
    """The token file is unreadable or malformed (the message names the line, never a digest)."""


def token_digest(token: str) -> str:
    """What the token file holds for `token`: sha256 of its UTF-8 bytes, lowercase hex."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_token_file(text: str, source: str = "token file") -> list[tuple[str, str]]:
    """(tenant, digest) per line; blank lines and `#` comments are skipped."""
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2 or not TENANT.fullmatch(parts[0]) or not _DIGEST.fullmatch(parts[1].lower()):
            raise TokenFileError(
                f"{source} line {number}: expected 'TENANT SHA256_HEX' (tenant {TENANT.pattern}, 64 hex digits)"
            )
        entries.append((parts[0], parts[1].lower()))
    return entries


class TokenFile:
    """The token file at `path`, re-read whenever its modification time or size changes. A file
    that turns malformed keeps the last good contents (logged), so a bad edit locks nobody out."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries = self._read()  # at start a bad file is an error: the server does not start

    def _read(self) -> list[tuple[str, str]]:
        try:
            st = os.stat(self.path)
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenFileError(f"cannot read the token file {self.path}: {type(e).__name__}") from None
        entries = parse_token_file(text, self.path)
        self._stamp = (st.st_mtime_ns, st.st_size)
        return entries

    def entries(self) -> list[tuple[str, str]]:
        with self._lock:
            try:
                st = os.stat(self.path)
                if (st.st_mtime_ns, st.st_size) != self._stamp:
                    self._entries = self._read()
                    log.info("token file %s re-read: %d token(s)", self.path, len(self._entries))
            except TokenFileError as e:
                log.error("%s; keeping the previous %d token(s)", e, len(self._entries))
            except OSError as e:
                log.error("token file %s: %s; keeping the previous tokens", self.path, type(e).__name__)
            return self._entries

    def tenant_for(self, token: str) -> str | None:
        """The tenant of `token`, or None. Every line is compared (constant time per digest),
        so the time taken does not say which line nearly matched."""
        digest = token_digest(token)
        found = None
        for tenant, expected in self.entries():
            if hmac.compare_digest(expected, digest):
                found = tenant
        return found


def is_loopback(host: str) -> bool:
    """Whether a bind host (as in MEMSCORE_BIND or `--bind`) listens on loopback only."""
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Authenticator:
    """Turns a call's metadata and TLS peer into a tenant, or raises Unauthenticated."""

    tokens: TokenFile | None = None
    client_certs: bool = False  # the server requires (and gRPC has verified) client certificates

    @property
    def anonymous(self) -> bool:
        return self.tokens is None and not self.client_certs

    def tenant(self, metadata, auth_context: dict | None = None) -> str:
        """`metadata`: the call's (key, value) pairs; `auth_context`: gRPC's peer auth context."""
        if self.anonymous:
            return DEFAULT_TENANT
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is not None:
            if self.tokens is None:
                raise Unauthenticated("this server takes client certificates, not tokens")
            scheme, _, token = str(header).partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
                raise Unauthenticated("the authorization header must be 'Bearer <token>'")
            tenant = self.tokens.tenant_for(token)
            if tenant is None:
                raise Unauthenticated("the token is not valid (unknown, revoked or mistyped)")
            return tenant
        if self.client_certs and auth_context:
            names = auth_context.get("x509_common_name") or []
            name = names[0].decode("utf-8", "replace") if names else ""
            if TENANT.fullmatch(name):
                return name
            raise Unauthenticated("the client certificate's common name is not a valid tenant name")
        raise Unauthenticated("this server needs a token: send 'authorization: Bearer <token>' (memscore --token)")


def authenticator_from_settings(settings, bind_host: str) -> Authenticator:
    """The servers' authenticator. No tokens and no client CA is allowed only on a loopback
    bind or with MEMSCORE_ALLOW_UNAUTHENTICATED; else a clear error and the server does not start."""
    tokens = TokenFile(settings.auth_tokens) if settings.auth_tokens else None
    auth = Authenticator(tokens=tokens, client_certs=bool(settings.tls_client_ca))
    if auth.anonymous and not is_loopback(bind_host) and not settings.allow_unauthenticated:
        raise RuntimeError(
            f"refusing to serve without authentication on {bind_host!r}: set MEMSCORE_AUTH_TOKENS to a token "
            "file (lines 'TENANT SHA256_HEX'), or MEMSCORE_TLS_CLIENT_CA for client certificates, or bind "
            "127.0.0.1; MEMSCORE_ALLOW_UNAUTHENTICATED=true only behind a proxy that authenticates"
        )
    if auth.anonymous and not is_loopback(bind_host):
        log.warning("serving WITHOUT authentication on %s (MEMSCORE_ALLOW_UNAUTHENTICATED)", bind_host)
    return auth
