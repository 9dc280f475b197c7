"""Bootstrap through DNS: one ``--peer`` name stands for every address it resolves to.

On Kubernetes a headless Service's name resolves to the address of every pod
behind it, and on Compose a service's name to each of its containers. A
bootstrap URL ``ws://dellm-peers:7070`` is expanded into one URL per address
(``ws://10.1.0.7:7070``, ``ws://10.1.2.9:7070``, ...), the node joins through
each, and the name is resolved again every ``refresh_s`` so that pods added
later, or restarted with a new address, are joined without any per-pod
configuration. Our own address is left out (joining ourselves would be
refused as a duplicate node id).

Resolution runs in the event loop's resolver thread (``loop.getaddrinfo``)
under a deadline: a slow or dead DNS server never blocks the loop, and a
name that does not resolve (no pod ready yet) contributes nothing this round
and is tried again at the next one.

``wss://`` names are not expanded: a TLS certificate names the host, not its
addresses, so those URLs are dialled by name as given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from ..config import is_loopback  # noqa: F401 (the membership's name for it)

log = logging.getLogger(__name__)

DNS_TIMEOUT_S = 5.0  # deadline of one name's resolution [s]
DNS_REFRESH_S = 30.0  # period of re-resolution [s]; a new pod is joined within about this long

Resolve = Callable[[str, int], Awaitable[list[str]]]


def is_ip(host: str) -> bool:
    """True when ``host`` is an IPv4 or IPv6 literal (brackets allowed), False for a DNS name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


async def resolve_addresses(host: str, port: int, timeout_s: float = DNS_TIMEOUT_S) -> list[str]:
    """The distinct addresses of ``host`` (IPv4 and IPv6, in the resolver's order).

    Runs ``getaddrinfo`` in the loop's executor, so the event loop never waits on DNS.

    Raises:
        OSError: the name does not resolve (``socket.gaierror``).
        TimeoutError: no answer within ``timeout_s`` [s].
    """
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _url_for(scheme: str, address: str, port: int, path: str) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}{path}"


class BootstrapResolver:
    """Expands bootstrap URLs whose host is a DNS name into one URL per address.

    Args:
        urls: bootstrap URLs (``ws://host:port``); IP literals and ``wss://``
            URLs are kept as given.
        own_url: our advertised URL, left out of the result (also when its
            host is a name that resolves to one of the addresses).
        timeout_s: deadline of one name's resolution [s].
        refresh_s: how often the caller should call :meth:`resolve` again [s].
        resolve: ``(host, port) -> addresses``; default
            :func:`resolve_addresses` (tests pass their own resolver).
    """

    def __init__(
        self,
        urls: list[str],
        own_url: str | None = None,
        timeout_s: float = DNS_TIMEOUT_S,
        refresh_s: float = DNS_REFRESH_S,
        resolve: Resolve | None = None,
    ):
        self.urls = list(urls)
        self.own_url = own_url
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self._resolve = resolve or (lambda host, port: resolve_addresses(host, port, timeout_s))
        self._failures: dict[str, str] = {}  # name -> why its last resolution failed (logged once per cause)

    @staticmethod
    def _name_of(url: str) -> tuple[str, int] | None:
        """(host, port) of a ``ws://`` URL whose host is a DNS name; ``None`` for anything kept as given."""
        try:
            parts = urlsplit(url)
            host, port = parts.hostname, parts.port
        except ValueError:
            return None
        if parts.scheme != "ws" or not host or not port or is_ip(host):
            return None
        return host, port

    @property
    def has_names(self) -> bool:
        """True when some bootstrap URL (or our own URL) needs DNS."""
        return any(self._name_of(u) for u in [*self.urls, self.own_url or ""])

    async def _addresses(self, host: str, port: int) -> list[str]:
        """``host``'s addresses, or ``[]`` (logged once per cause) when it does not resolve in time."""
        try:
            async with asyncio.timeout(self.timeout_s):
                addresses = await self._resolve(host, port)
        except (OSError, TimeoutError) as exc:
            why = str(exc) or f"no answer within {self.timeout_s:g} s"
            if self._failures.get(host) != why:
                log.warning("bootstrap name %s does not resolve (will retry): %s", host, why)
            self._failures[host] = why
            return []
        if host in self._failures:
            log.info("bootstrap name %s resolves again: %s", host, ", ".join(addresses))
            del self._failures[host]
        return addresses

    async def resolve(self) -> list[str]:
        """The bootstrap URLs now: names expanded to one URL per address, our own URL left out.

        Names are resolved concurrently, each within ``timeout_s``; a name
        that fails contributes nothing (never raises). Order: as configured,
        each name's addresses in the resolver's order, duplicates dropped.
        """
        targets = [self._name_of(u) for u in self.urls]
        own = self._name_of(self.own_url) if self.own_url else None
        names = list(dict.fromkeys(t for t in [*targets, own] if t is not None))
        found = await asyncio.gather(*(self._addresses(host, port) for host, port in names))
        addresses = dict(zip(names, found, strict=True))
        expanded: list[str] = []
        for url, target in zip(self.urls, targets, strict=True):
            if target is None:
                expanded.append(url)
                continue
            path = urlsplit(url).path
            expanded += [_url_for("ws", a, target[1], path) for a in addresses[target]]
        mine = {self.own_url}
        if own is not None:
            mine.update(_url_for("ws", a, own[1], urlsplit(self.own_url or "").path) for a in addresses[own])
        return [u for u in dict.fromkeys(expanded) if u not in mine]
