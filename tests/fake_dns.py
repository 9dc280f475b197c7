"""A SIMULATED DNS for tests (never used by the product): names -> loopback addresses.

In-process: :func:`install` patches ``socket.getaddrinfo``, which asyncio's
``loop.getaddrinfo`` (and so every connect by name) calls in its resolver
thread. In a child process::

    DELLM_TEST_DNS='{"dellm-peers": ["127.0.0.2", "127.0.0.3"]}' python -m tests.fake_dns ARGS...

runs ``dellm-node ARGS...`` with the names of ``DELLM_TEST_DNS`` resolving to
those addresses, on asyncio's own loop (uvloop resolves in C, past the patch).
Any other name resolves as usual. Tests only ever map names to 127.0.0.0/8.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable

ENV = "DELLM_TEST_DNS"


def install(mapping: dict[str, list[str]]) -> Callable[[], None]:
    """Make the names of ``mapping`` resolve to its addresses (read at each lookup: the dict may change).

    A name mapped to ``[]`` fails as an unknown name does (``socket.gaierror``).
    Returns a function that restores the real resolver.
    """
    real = socket.getaddrinfo

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        if name not in mapping:
            return real(host, port, family, type, proto, flags)
        addresses = mapping[name]
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        kind = type or socket.SOCK_STREAM
        number = int(port or 0)
        return [(socket.AF_INET, kind, proto, "", (address, number)) for address in addresses]

    socket.getaddrinfo = getaddrinfo

    def restore() -> None:
        socket.getaddrinfo = real

    return restore


def main() -> None:
    sys.modules["uvloop"] = None  # type: ignore[assignment]  # asyncio's loop resolves through socket.getaddrinfo
    install(json.loads(os.environ.get(ENV, "{}")))
    from dellm_p2p.cli.node import main as node_main

    sys.argv = ["dellm-node", *sys.argv[1:]]
    node_main()


if __name__ == "__main__":
    main()
