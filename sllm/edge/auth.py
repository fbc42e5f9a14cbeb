"""API keys: parsing the configured keys and finding the one a request presents.

Pure: no IO besides reading the keys file at start-up, no Redis, no HTTP.

Keys come from ``SLLM_API_KEYS`` (comma-separated) and ``SLLM_API_KEYS_FILE`` (one key
per line). Both use one syntax per entry: the key, then optional per-key limits::

    # comment lines and blank lines are skipped; text after " #" is a comment
    sk-team-a                       # the default limits (SLLM_RATE_LIMIT_RPM / _TPM)
    sk-team-b  rpm=60 tpm=10000     # its own limits; 0 means unlimited

Nothing here ever puts a key into a message: errors name the line, and a key is
named in logs by its fingerprint (the start of its SHA-256).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

LIMIT_NAMES = ("rpm", "tpm")


class KeyConfigError(ValueError):
    """The configured keys cannot be read; the message names the place, never the key."""


@dataclass(frozen=True)
class Limits:
    """Requests and tokens per minute; ``None`` falls back to the default, 0 is unlimited."""

    rpm: int | None = None
    tpm: int | None = None

    def over(self, default: Limits) -> Limits:
        return Limits(
            self.rpm if self.rpm is not None else default.rpm,
            self.tpm if self.tpm is not None else default.tpm,
        )

    @property
    def unlimited(self) -> bool:
        return not self.rpm and not self.tpm


@dataclass(frozen=True, repr=False)
class ApiKey:
    # repr=False: a key must not reach a log line through a dataclass repr.
    secret: str
    limits: Limits = Limits()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.secret)

    def __repr__(self) -> str:
        return f"ApiKey(key#{self.fingerprint}, {self.limits})"


def fingerprint(secret: str) -> str:
    """A short name for a key that does not reveal it: logs and Redis keys use this."""
    return hashlib.sha256(secret.encode()).hexdigest()[:16]


def _digest(value: str) -> bytes:
    # Comparing fixed-length digests keeps even a key's length out of the timing.
    return hashlib.sha256(value.encode()).digest()


def matches(presented: str, secret: str) -> bool:
    """Constant-time equality of a presented token and one secret."""
    return hmac.compare_digest(_digest(presented), _digest(secret))


def store_token(cluster_token: str) -> str:
    """The token that reads workers' stores (``/store/*``) and nothing else, derived
    from the cluster token: what a backend process gets to fetch a model from a peer,
    where the cluster token itself would let its model's code start and stop instances."""
    return hmac.new(cluster_token.encode(), b"sllm store read", hashlib.sha256).hexdigest()


class KeyRing:
    """The configured API keys; ``find`` compares with every key, never stopping early."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys = [(_digest(k.secret), k) for k in keys]

    def __len__(self) -> int:
        return len(self._keys)

    def __bool__(self) -> bool:
        return bool(self._keys)

    def __repr__(self) -> str:
        return f"KeyRing({len(self._keys)} keys)"

    def find(self, presented: str) -> ApiKey | None:
        digest = _digest(presented)
        found: ApiKey | None = None
        for key_digest, key in self._keys:
            # No break: the time taken does not depend on which key matched.
            if hmac.compare_digest(digest, key_digest):
                found = key
        return found


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def parse_entry(text: str, where: str) -> ApiKey | None:
    """One keys-file line (or one comma-separated item): None for a blank or comment."""
    body = text.strip()
    if body.startswith("#"):
        return None
    # A comment after the key starts at whitespace then '#', so a key may contain '#'.
    for sep in (" #", "\t#"):
        body = body.split(sep, 1)[0]
    words = body.split()
    if not words:
        return None
    secret, options = words[0], words[1:]
    if "=" in secret and secret.split("=", 1)[0] in LIMIT_NAMES:
        raise KeyConfigError(f"{where}: the line starts with a limit, not a key")
    if not all(0x21 <= ord(c) <= 0x7E for c in secret):
        raise KeyConfigError(f"{where}: a key must be printable ASCII without spaces")
    values: dict[str, int] = {}
    for option in options:
        name, eq, raw = option.partition("=")
        if not eq or name not in LIMIT_NAMES:
            raise KeyConfigError(
                f"{where}: unknown option {name!r} (expected rpm=N or tpm=N after the key)"
            )
        if name in values:
            raise KeyConfigError(f"{where}: {name} is given twice")
        try:
            number = int(raw)
        except ValueError:
            number = -1
        if number < 0:
            raise KeyConfigError(f"{where}: {name} must be a whole number >= 0 (0: unlimited)")
        values[name] = number
    return ApiKey(secret, Limits(values.get("rpm"), values.get("tpm")))


def parse_keys(lines: Iterable[str], source: str, unit: str = "line") -> list[ApiKey]:
    keys: list[ApiKey] = []
    for number, line in enumerate(lines, 1):
        key = parse_entry(line, f"{source} {unit} {number}")
        if key is not None:
            keys.append(key)
    return keys


def load_keys(env_value: str | None, keys_file: Path | None) -> list[ApiKey]:
    """The keys of ``SLLM_API_KEYS`` and of the keys file, each key once."""
    keys = parse_keys((env_value or "").split(","), "SLLM_API_KEYS", "item")
    if keys_file is not None:
        try:
            text = keys_file.expanduser().read_text()
        except OSError as exc:
            raise KeyConfigError(
                f"cannot read the API keys file {keys_file}: {exc.strerror}"
            ) from None
        keys += parse_keys(text.splitlines(), str(keys_file))
    seen: set[str] = set()
    for key in keys:
        if key.secret in seen:
            raise KeyConfigError(f"key#{key.fingerprint} is configured twice")
        seen.add(key.secret)
    return keys
