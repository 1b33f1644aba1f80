"""Bearer tokens for ``glassdetect serve``: who may use the service, and under which name it counts them.

Tokens come from a file (``--token-file``: one token per line; ``#`` starts a comment; a line
``NAME:TOKEN`` names its holder) and/or from the environment variable ``GLASSDETECT_TOKENS``
(the same entries separated by commas or new lines). Requests send ``Authorization: Bearer TOKEN``.
Every known token is compared with :func:`hmac.compare_digest` on SHA-256 digests (equal lengths,
no early exit, no short-circuit over the list), so the time of a refusal says nothing about how
much of a token was right. The name a request is counted under is the token's NAME, or
``token-`` and the first 8 hex digits of its SHA-256 when it has none: never the token itself.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

TOKENS_ENV = "GLASSDETECT_TOKENS"
MIN_TOKEN_CHARS = 16


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _parse(entries: Iterable[str], where: str) -> dict[str, bytes]:
    """{name: digest} from ``[NAME:]TOKEN`` entries; blank entries and ``#`` comments are skipped."""
    out: dict[str, bytes] = {}
    for n, raw in enumerate(entries, 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        name, sep, token = entry.partition(":")
        if not sep:
            name, token = "", entry
        name, token = name.strip(), token.strip()
        if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ValueError(f"{where}, entry {n}: a token must be at least {MIN_TOKEN_CHARS} characters "
                             "without spaces (e.g. `openssl rand -hex 32`)")
        digest = _digest(token)
        label = name or f"token-{digest.hex()[:8]}"
        if label in out:
            raise ValueError(f"{where}, entry {n}: the name {label!r} is used twice")
        out[label] = digest
    return out


@dataclass(frozen=True)
class Tokens:
    """The accepted tokens, by the name their requests are counted under (empty: access is open)."""

    by_name: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, token_file: str | Path | None = None, env: str | None = TOKENS_ENV) -> Tokens:
        """Tokens from ``token_file`` and from the environment variable ``env`` (both when both are set)."""
        found: dict[str, bytes] = {}
        if token_file is not None:
            path = Path(token_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"{path}: cannot read the token file ({exc.strerror or exc})") from None
            found.update(_parse(text.splitlines(), str(path)))
            if not found:
                raise ValueError(f"{path}: the token file holds no token")
        value = os.environ.get(env, "") if env else ""
        if value.strip():
            for name, digest in _parse(value.replace(",", "\n").splitlines(), f"${env}").items():
                if name in found and found[name] != digest:
                    raise ValueError(f"${env}: the name {name!r} is also in {token_file} with another token")
                found[name] = digest
        return cls(found)

    @property
    def enabled(self) -> bool:
        return bool(self.by_name)

    def check(self, authorization: str | None) -> str | None:
        """The name of the token in an ``Authorization: Bearer ...`` header value, or None when it is missing
        or wrong. Compares against every token, in constant time each."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = _digest(token.strip())
        match = None
        for name, known in self.by_name.items():
            if hmac.compare_digest(digest, known) and match is None:
                match = name
        return match


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only accepts connections from this machine."""
    if host.strip().lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def exposure_warning(host: str, tokens: Tokens) -> str | None:
    """The warning for a service anyone on the network can use (not loopback, no token), else None."""
    if tokens.enabled or is_loopback(host):
        return None
    return (f"serving on {host} without access control: anyone who can reach this port can use the model. "
            f"Give tokens with --token-file FILE or ${TOKENS_ENV} (docs/service.md).")
