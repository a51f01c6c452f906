"""Who may talk to the emulator: the Host a request names, and its API key.

``check_host`` refuses a request whose ``Host`` header is not a name this server answers
to (DNS rebinding: a web page on ``evil.example`` whose name now resolves to 127.0.0.1
sends ``Host: evil.example``). ``require_key`` checks the ``Authorization`` header against
a :class:`KeyRing`; a request's key is identified by its index in the ring (``KEY_ID``),
which rate limits and external workers are keyed by, so a key's value is kept nowhere
else. Request bodies must be JSON (``http.read_json``): a page can post a form or
``text/plain`` anywhere, but not JSON, without the server's consent.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from bridge.emulator.http import KEY_ID, SETTINGS, error_response, refusal
from bridge.emulator.settings import DEV_API_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class KeyRing:
    """The API keys the server accepts; a key can be added or revoked while it runs."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = list(keys)
        self._revoked: set[int] = set()

    def identify(self, presented: str, *, loopback_caller: bool) -> str | None:
        """The id of the key ``presented``, or None when it is not accepted. The public
        development key is accepted only from loopback callers."""
        for index, key in enumerate(self._keys):
            if hmac.compare_digest(presented.encode(), key.encode()):
                if index in self._revoked or (key == DEV_API_KEY and not loopback_caller):
                    return None
                return str(index)
        return None

    def add(self, key: str) -> None:
        """Accept ``key`` from now on (again, if it was revoked)."""
        if not key.strip():
            raise ValueError("an API key must not be empty")
        if key in self._keys:
            self._revoked.discard(self._keys.index(key))
        else:
            self._keys.append(key)

    def revoke(self, key: str) -> bool:
        """Refuse ``key`` from now on, as when a user deletes it in RunPod's console.
        Returns False when the key was never accepted here."""
        for index, known in enumerate(self._keys):
            if hmac.compare_digest(key.encode(), known.encode()):
                self._revoked.add(index)
                return True
        return False


KEYRING: web.AppKey[KeyRing] = web.AppKey("keyring", KeyRing)


def is_loopback(address: str | None) -> bool:
    """True for a loopback IP address (``127.0.0.0/8``, ``::1``, IPv4-mapped too)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def host_name(header: str) -> str:
    """The name in a ``Host`` header: no port, no IPv6 brackets, lower case, no final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    name, colon, port = header.rpartition(":")
    if colon and port.isdigit() and ":" not in name:
        header = name
    return header.rstrip(".")


def host_allowed(header: str | None, bind: str, allowed: list[str]) -> bool:
    """True when a request naming ``header`` may be served by a server bound to ``bind``.

    Served: ``localhost``, the names in ``allowed`` (``*`` for any), the bind address when
    it is a name, and IP addresses: loopback ones when bound to loopback, any other bind
    takes any (a page cannot make a browser send an IP address it does not reach).
    """
    if not header:
        return False
    name = host_name(header)
    if name == "localhost" or name in allowed or "*" in allowed:
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return name == bind.lower().rstrip(".") and not _is_address(bind)
    return is_loopback(str(ip)) or not _bound_to_loopback(bind)


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bound_to_loopback(bind: str) -> bool:
    return bind == "localhost" or is_loopback(bind)


@web.middleware
async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    header = request.headers.get("Host")
    if not host_allowed(header, settings.host, settings.allowed_hosts):
        shown = (header or "")[:100]
        return error_response(
            421,
            f"this server does not answer to Host {shown!r}: use localhost or its address, "
            "or add the name to allowed_hosts",
        )
    return await handler(request)


def presented_key(request: web.Request) -> str | None:
    """The key in the ``Authorization`` header: ``Bearer <key>`` or the bare key (workers
    send it bare). Keys in the query string (``?api_key=``) are never read."""
    header = request.headers.get("Authorization")
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else header.strip()


@web.middleware
async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    presented = presented_key(request)
    if not presented:
        message = "missing API key: send 'Authorization: Bearer <key>'"
        if "api_key" in request.query:
            message += " (a key in the query string is not accepted)"
        return refusal(request, 401, message)
    key_id = request.app[KEYRING].identify(presented, loopback_caller=is_loopback(request.remote))
    if key_id is None:
        return refusal(request, 401, "invalid API key")
    request[KEY_ID] = key_id
    return await handler(request)
