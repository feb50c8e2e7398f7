"""Who may do what: API keys with roles, and signed stream URLs.

With API_KEYS (or API_KEYS_FILE) set, every /clips route needs a key in
`Authorization: Bearer <key>` or `X-API-Key`: `read` keys list, show, stat
and stream; `write` keys also create, edit and delete. A stream also opens
with the `exp` and `sig` query parameters its `stream_url` carries, so a
plain `<audio src>` plays without headers. Keys are kept only as SHA-256
digests and a presented key is compared with every one of them in constant
time, so response timing tells nothing about how close a guess was. The
key line format (`read:<key>`) is parsed with the settings (settings.py).
"""

import base64
import hashlib
import hmac
import logging
import math
import time

from aiohttp import web

from schemas.fields import positive_bigint
from web.problems import Problem

log = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})


class ApiKeys:
    def __init__(self, entries: list[tuple[str, str]]):
        self._digests = [(role, self._digest(key)) for role, key in entries]

    @staticmethod
    def _digest(key: str) -> bytes:
        # A header's bytes that are not UTF-8 arrive as lone surrogates
        # (aiohttp decodes with surrogateescape): digest the bytes as sent, so
        # such a key is merely unknown (401), never an encoding error (500).
        return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()

    def __bool__(self) -> bool:
        return bool(self._digests)

    def role_of(self, key: str) -> str | None:
        """The role of a presented key, or None. Every stored digest is
        compared, in constant time, whatever matches first."""
        digest = self._digest(key)
        role = None
        for candidate, known in self._digests:
            if hmac.compare_digest(digest, known):
                role = candidate
        return role


class StreamSigner:
    """HMAC signatures for stream URLs. The first secret signs; every secret
    verifies, so a new secret can be put first while URLs signed with the
    old one keep working until they expire. Expiry times are rounded up to
    a step of a tenth of the TTL, so a clip's URL stays the same for a while
    and browsers can cache its audio."""

    def __init__(self, secrets: tuple[str, ...], ttl: int):
        self._secrets = [s.encode() for s in secrets]
        self._ttl = ttl
        self._step = max(1, ttl // 10)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    def _mac(self, secret: bytes, clip_id: int, expires: int) -> str:
        digest = hmac.new(secret, f"{clip_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def sign(self, clip_id: int, now: float | None = None) -> dict[str, str]:
        now = time.time() if now is None else now
        expires = math.ceil((now + self._ttl) / self._step) * self._step
        return {"exp": str(expires), "sig": self._mac(self._secrets[0], clip_id, expires)}

    def verify(self, clip_id: int, expires: str, signature: str, now: float | None = None) -> bool:
        """Whether `signature` signs this clip until `expires`, both as the
        URL carried them (any text: `exp=²`, 5,000 digits, bytes that are not
        UTF-8 are all merely invalid)."""
        now = time.time() if now is None else now
        expiry = positive_bigint(expires)
        if expiry is None or expiry < now or not signature.isascii():
            return False
        matches = [
            hmac.compare_digest(signature.encode(), self._mac(s, clip_id, expiry).encode())
            for s in self._secrets
        ]
        return any(matches)


class Access:
    def __init__(self, keys: ApiKeys, signer: StreamSigner):
        self.keys = keys
        self.signer = signer


ACCESS = web.AppKey("ACCESS", Access)
# The one route a signed URL opens (handlers/streams.py serves it).
STREAM_ROUTE = "/clips/{clip_id}/stream"
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="clips"'}


def presented_key(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.headers.get("X-API-Key") or None


def signed_stream(request: web.Request, signer: StreamSigner) -> bool | None:
    """None when the request carries no signature; else whether it is valid
    for this very clip and not expired."""
    resource = request.match_info.route.resource
    if resource is None or resource.canonical != STREAM_ROUTE:
        return None
    expires, signature = request.query.get("exp"), request.query.get("sig")
    if expires is None and signature is None:
        return None
    clip_id = positive_bigint(request.match_info["clip_id"])
    if not (signer and expires and signature and clip_id is not None):
        return False
    return signer.verify(clip_id, expires, signature)


def check(request: web.Request) -> None:
    """Let the request through to its handler, or raise the 401 or 403
    that says why not (web/chain.py calls it before every handler)."""
    access = request.app[ACCESS]
    if not access.keys or not request.path.startswith("/clips") or request.method == "OPTIONS":
        return
    needed = "read" if request.method in READ_METHODS else "write"
    key = presented_key(request)
    if key is None:
        signed = signed_stream(request, access.signer) if needed == "read" else None
        if signed:
            return
        if signed is False:
            raise Problem(403, "The stream URL is expired, altered or for another clip")
        raise Problem(401, "Send an API key: Authorization: Bearer <key>", headers=CHALLENGE)
    role = access.keys.role_of(key)
    if role is None:
        raise Problem(401, "The API key is not valid", headers=CHALLENGE)
    if needed == "write" and role != "write":
        raise Problem(403, "This key may only read; writing needs a write key")
