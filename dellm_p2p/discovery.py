"""Zero-configuration discovery on the local network: mDNS / DNS-SD via zeroconf.

Each node registers the service type ``_dellm._tcp.local.`` with TXT
properties and browses the same type. TXT properties (all UTF-8 strings):

=========  ====================================================
``id``     node id
``proto``  wire protocol version (int)
``port``   websocket port (int, 1..65535)
``model``  model name ("" for a node without a model)
``cap``    capacity: max concurrent requests (int >= 0)
``tls``    "1" when the node serves ``wss://`` (absent: ``ws://``)
``fp``     key fingerprint: SHA-256 of the node's Ed25519 public
           key, 64 lowercase hex digits; ``id`` must be the node
           id derived from it (:mod:`dellm_p2p.identity`)
=========  ====================================================

Malformed records (a missing ``fp`` or an ``id`` that does not derive from
it included), incompatible protocol versions and our own announcement
are ignored with one log line per service name. On a clean stop the node
unregisters (an mDNS goodbye), so peers drop it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from .identity import node_id_from_fingerprint
from .protocol import PROTOCOL_VERSION

log = logging.getLogger(__name__)

SERVICE_TYPE = "_dellm._tcp.local."
_RESOLVE_TIMEOUT_MS = 3000


@dataclass(frozen=True)
class Announcement:
    """A peer found by mDNS.

    Attributes:
        node_id: the peer's node id.
        url: its websocket URL (``ws://address:port``).
        model: model name, ``None`` for a peer without a model.
        capacity: max concurrent requests.
        service: the mDNS service name (used to match removals).
        fingerprint: SHA-256 of its public key (64 hex digits); the hello
            later carries the key itself.
    """

    node_id: str
    url: str
    model: str | None
    capacity: int
    service: str
    fingerprint: str = ""


class MdnsError(ValueError):
    """A TXT record that is not a valid dellm announcement."""


def parse_service(info: AsyncServiceInfo) -> Announcement:
    """Turn a resolved service into an :class:`Announcement`.

    Raises:
        MdnsError: missing or malformed properties, incompatible protocol,
            or no IPv4 address.
    """
    props = {}
    for key, value in (info.properties or {}).items():
        try:
            props[key.decode()] = value.decode() if value is not None else ""
        except (UnicodeDecodeError, AttributeError):
            raise MdnsError("TXT record is not UTF-8") from None
    node_id = props.get("id", "")
    if not 0 < len(node_id) <= 128:
        raise MdnsError("TXT record has no valid 'id'")
    fingerprint = props.get("fp", "")
    if node_id_from_fingerprint(fingerprint) != node_id:
        what = "has no valid key fingerprint 'fp'" if not fingerprint else "'id' does not derive from its 'fp'"
        raise MdnsError(f"TXT record {what}")
    try:
        proto, port, cap = int(props.get("proto", "")), int(props.get("port", "")), int(props.get("cap", "0"))
    except ValueError:
        raise MdnsError("TXT 'proto', 'port' or 'cap' is not an integer") from None
    if proto != PROTOCOL_VERSION:
        raise MdnsError(f"protocol {proto} is incompatible with ours ({PROTOCOL_VERSION})")
    if not 0 < port < 65536 or cap < 0:
        raise MdnsError(f"TXT 'port' {port} or 'cap' {cap} out of range")
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses:
        raise MdnsError("service has no IPv4 address")
    scheme = "wss" if props.get("tls") == "1" else "ws"  # TXT tls=1: the node serves TLS
    url = f"{scheme}://{addresses[0]}:{port}"
    return Announcement(node_id, url, props.get("model") or None, cap, info.name, fingerprint)


class MdnsDiscovery:
    """Announce this node and report peers as they appear and leave.

    Args:
        node_id: our node id (our own announcement is not reported).
        name: node name, used in the service instance name.
        port: our websocket port.
        model: model we serve (``None`` for none).
        capacity: max concurrent requests we serve.
        interfaces: IPv4 addresses to announce and browse on; tests use
            ``["127.0.0.1"]``. ``None`` = all interfaces.
        on_found: called with each valid peer announcement (also on update).
        on_removed: called with a peer's node id when its service goes away.
        announce: register our own service (``False`` to browse only, as
            the ``dellm`` CLI does).
        tls: we serve ``wss://`` (announced as TXT ``tls=1``).
        fingerprint: our key fingerprint (``Identity.fingerprint``), announced
            as TXT ``fp``; required when announcing.
    """

    def __init__(
        self,
        *,
        node_id: str,
        name: str,
        port: int,
        model: str | None,
        capacity: int,
        interfaces: Sequence[str] | None,
        on_found: Callable[[Announcement], None],
        on_removed: Callable[[str], None],
        announce: bool = True,
        tls: bool = False,
        fingerprint: str | None = None,
    ):
        if announce and fingerprint is None:
            raise ValueError("an announced node needs its key fingerprint (TXT 'fp')")
        self.node_id = node_id
        self.announce = announce
        self._interfaces = list(interfaces) if interfaces else None
        self._on_found = on_found
        self._on_removed = on_removed
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._by_service: dict[str, str] = {}
        self._warned: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        instance = f"{name}-{node_id}"[:63]
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance}.{SERVICE_TYPE}",
            addresses=[socket.inet_aton(a) for a in self._announce_addresses()],
            port=port,
            properties={
                "id": node_id,
                "proto": str(PROTOCOL_VERSION),
                "port": str(port),
                "model": model or "",
                "cap": str(capacity),
                **({"tls": "1"} if tls else {}),
                "fp": fingerprint or "",
            },
            server=f"dellm-{node_id}.local.",
        )

    @property
    def interfaces(self) -> list[str] | None:
        """The IPv4 addresses used for mDNS (``None`` = all interfaces)."""
        return self._interfaces

    def _announce_addresses(self) -> list[str]:
        if self._interfaces:
            return self._interfaces
        import ifaddr

        found = [
            ip.ip
            for adapter in ifaddr.get_adapters()
            for ip in adapter.ips
            if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
        ]
        return found or ["127.0.0.1"]

    async def start(self) -> None:
        """Register our service and start browsing."""
        kwargs = {"ip_version": IPVersion.V4Only}
        if self._interfaces:
            kwargs["interfaces"] = self._interfaces
        self._zc = AsyncZeroconf(**kwargs)
        if self.announce:
            await self._zc.async_register_service(self._info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [SERVICE_TYPE], handlers=[self._on_change])

    async def close(self) -> None:
        """Unregister (goodbye packets) and stop browsing. Idempotent."""
        zc, self._zc = self._zc, None
        if zc is None:
            return
        if self._browser is not None:
            await self._browser.async_cancel()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await zc.async_unregister_all_services()
        await zc.async_close()

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            node_id = self._by_service.pop(name, None)
            if node_id is not None and node_id != self.node_id:
                self._on_removed(node_id)
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, _RESOLVE_TIMEOUT_MS):
            return
        try:
            found = parse_service(info)
        except MdnsError as exc:
            if name not in self._warned:
                self._warned.add(name)
                log.warning("ignoring mDNS service %s: %s", name, exc)
            return
        if found.node_id == self.node_id:
            if name != self._info.name and name not in self._warned:
                self._warned.add(name)
                log.error("duplicate node id %s: also announced by %s at %s", found.node_id, name, found.url)
            return
        self._by_service[name] = found.node_id
        self._on_found(found)


async def browse(interfaces: Sequence[str] | None, timeout_s: float = 3.0, enough: int = 1) -> list[Announcement]:
    """Browse mDNS without announcing; return the nodes found within ``timeout_s`` [s].

    Returns early once ``enough`` nodes are found (then waits a short moment
    for others answering the same query).
    """
    found: dict[str, Announcement] = {}
    got_enough = asyncio.Event()

    def on_found(announcement: Announcement) -> None:
        found[announcement.node_id] = announcement
        if len(found) >= enough:
            got_enough.set()

    browser = MdnsDiscovery(
        node_id="-browser-",
        name="dellm-cli",
        port=1,
        model=None,
        capacity=0,
        interfaces=interfaces,
        on_found=on_found,
        on_removed=lambda node_id: found.pop(node_id, None),
        announce=False,
    )
    await browser.start()
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await got_enough.wait()
                await asyncio.sleep(0.3)
    finally:
        await browser.close()
    return list(found.values())
