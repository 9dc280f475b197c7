"""Checks of command-line values shared by ``dellm`` and ``dellm-node`` (click callbacks)."""

from __future__ import annotations

from urllib.parse import urlsplit

import click


def peer_url(ctx: click.Context | None, param: click.Parameter | None, value):
    """Click callback: ``--peer`` values must be ``ws://host:port`` or ``wss://host:port`` URLs.

    Refused at parse time (exit 2, one line) rather than after the
    discovery deadline as "no alive node": ``notaurl``, ``http://…``, a
    missing host or a port out of range. Without a port the scheme's
    default is used (80 for ws, 443 for wss: a node behind a proxy). ``None`` and tuples (repeatable
    options) pass through checked.

    Raises:
        click.BadParameter: the first value that is not such a URL.
    """
    if value is None:
        return None
    for url in value if isinstance(value, tuple) else (value,):
        parsed = urlsplit(url)
        try:
            parsed.port  # noqa: B018 (raises on a port that is not a number in range)
        except ValueError:
            raise click.BadParameter(f"{url!r}: the port must be a number from 0 to 65535") from None
        if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
            raise click.BadParameter(f"{url!r} is not a node URL; give ws://host:port (or wss:// with TLS)")
    return value
