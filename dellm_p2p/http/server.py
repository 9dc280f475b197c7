"""Serve the API app with uvicorn inside the caller's event loop (a task, no thread, no second loop).

uvicorn's :meth:`uvicorn.Server.serve` takes over SIGINT/SIGTERM while it
runs; the node owns those signals (graceful stop, second signal forces), so
:class:`_EmbeddedServer` leaves them alone and is stopped by :meth:`HttpServer.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from ..security import SecurityConfigError

log = logging.getLogger(__name__)


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the node handles signals


class HttpServer:
    """uvicorn serving ``app`` on ``host:port`` as a task of the running loop.

    Attributes:
        port: the bound port once :meth:`start` returned (useful with port 0).
        url: ``http://host:port``.
    """

    def __init__(self, app: Any, host: str, port: int, *, log_level: str = "warning"):
        self.host = host
        self._app = app
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            lifespan="off",
            log_level=log_level,
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _EmbeddedServer(config)
        self._task: asyncio.Task | None = None
        self.port = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, timeout_s: float = 10.0) -> str:
        """Bind and start serving; returns :attr:`url`.

        Raises:
            OSError: the address cannot be bound (uvicorn exits instead of raising: its reason is logged).
            TimeoutError: not listening within ``timeout_s`` [s].
        """
        self._task = asyncio.create_task(self._serve(), name="dellm-http")
        async with asyncio.timeout(timeout_s):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # re-raise what stopped it
                    raise OSError(f"cannot serve HTTP on {self.host}:{self._server.config.port}")
                await asyncio.sleep(0.01)
        sockets = [s for server in self._server.servers for s in server.sockets]
        self.port = sockets[0].getsockname()[1]
        return self.url

    async def _serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit as exc:  # uvicorn exits the process on a bind failure; a node must not
            raise OSError(f"cannot serve HTTP on {self.host}:{self._server.config.port} (exit {exc.code})") from None

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, let open responses end (streams are cut after ``timeout_s`` [s]). Idempotent."""
        if self._task is None:
            return
        # Endless responses (the dashboard's event streams) end now, not after the shutdown's grace period.
        for hook in getattr(getattr(self._app, "state", None), "on_close", ()):
            hook()
        self._server.should_exit = True
        try:
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._task)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        except Exception as exc:  # it failed earlier; start() reported it
            log.debug("HTTP server ended with %s", exc)
        with contextlib.suppress(BaseException):
            await self._task
        self._task = None


def load_api_key(path: str | Path) -> str:
    """The API key in ``path`` (surrounding whitespace stripped).

    Raises:
        SecurityConfigError: the file cannot be read, or holds no key (one line, never the key).
    """
    try:
        key = Path(path).expanduser().read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecurityConfigError(f"cannot read the API key file {path}: {exc}") from None
    if not key or any(c.isspace() for c in key):
        raise SecurityConfigError(f"the API key file {path} must hold one key without spaces")
    return key
