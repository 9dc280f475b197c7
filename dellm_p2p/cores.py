"""Claim CPU cores for a node's vLLM worker, so several nodes on one machine do not share one core.

vLLM's CPU worker binds its threads to the cores in
``VLLM_CPU_OMP_THREADS_BIND``; unless told otherwise it binds core 0, so
three nodes started side by side would all compute on core 0. A node started
without ``--cpu-bind`` claims cores here instead.

A claim is a file ``core-<core>.<slot>`` in :func:`cores_dir` holding an
exclusive ``flock``: slot 0 of every core is taken before any slot 1, so
nodes spread over the cores first and share them round-robin only when
there are more nodes than cores. The kernel drops the lock when its process
exits, however it exits, so a file left behind by a killed node is free
again (stale claims need no clean-up); a clean release also deletes the
file. The file holds the claimant's pid, for people reading the directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

MAX_SLOTS = 64  # nodes sharing one core; beyond this claims fail


class CoreClaimError(RuntimeError):
    """No core could be claimed (the claim directory is unusable, or every slot is taken)."""


def runtime_dir() -> Path:
    """Per-user directory for this machine's live dellm state.

    ``$XDG_RUNTIME_DIR/dellm`` where that is set, else ``<tmp>/dellm-<uid>``
    (created mode 0700).
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return Path(base) / "dellm"
    return Path(tempfile.gettempdir()) / f"dellm-{os.getuid()}"


def cores_dir() -> Path:
    """Where core claims live: ``runtime_dir() / "cores"``."""
    return runtime_dir() / "cores"


def cpu_list(cores: Iterable[int]) -> str:
    """Format core numbers as vLLM's ``VLLM_CPU_OMP_THREADS_BIND`` list, e.g. ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    ordered = sorted(set(cores))
    parts: list[str] = []
    start = prev = None
    for core in [*ordered, None]:
        if start is not None and (core is None or core != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if core is not None and start is None:
            start = core
        prev = core
    return ",".join(parts)


def parse_cpu_list(spec: str) -> list[int] | None:
    """Core numbers of a ``--cpu-bind`` list such as ``"0-2,5"``; ``None`` for anything else (``auto``, ``nobind``)."""
    cores: set[int] = set()
    try:
        for part in spec.split(","):
            first, _, last = part.strip().partition("-")
            low, high = int(first), int(last or first)
            if low < 0 or high < low or high - low > 4096:
                return None
            cores.update(range(low, high + 1))
    except ValueError:
        return None
    return sorted(cores)


class CoreClaim:
    """Cores held by this process until :meth:`release` (or until the process exits).

    Attributes:
        cores: the claimed core numbers, ascending.
        slots: the slot of each core (0 = nobody else had that core).
        spec: ``cores`` as a ``--cpu-bind`` / ``VLLM_CPU_OMP_THREADS_BIND`` value.
    """

    def __init__(self, held: list[tuple[int, int, int, Path]]):
        self._held = sorted(held)  # (core, slot, fd, path)
        self.cores = [core for core, _, _, _ in self._held]
        self.slots = [slot for _, slot, _, _ in self._held]
        self.spec = cpu_list(self.cores)

    def release(self) -> None:
        """Delete the claim files and drop the locks. Idempotent."""
        held, self._held = self._held, []
        for _, _, fd, path in held:
            # Unlink while still holding the lock: a process that opened the
            # old file meanwhile sees its inode is gone and tries again.
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)

    def __enter__(self) -> CoreClaim:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"CoreClaim(cores={self.spec!r}, slots={self.slots})"


def _try_lock(path: Path) -> int | None:
    """Open and exclusively lock ``path``; the fd, or ``None`` when another process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # released and deleted between our open and our lock: open the new file


def claim_cores(count: int = 1, *, directory: Path | None = None, available: Iterable[int] | None = None) -> CoreClaim:
    """Claim ``count`` distinct cores, the least shared first.

    Args:
        count: cores wanted (capped at the number available).
        directory: claim directory (default :func:`cores_dir`).
        available: candidate cores (default: this process's CPU affinity).

    Raises:
        CoreClaimError: the directory cannot be created or written, or
            every slot of every core is taken.
    """
    cores = sorted(set(available if available is not None else os.sched_getaffinity(0)))
    if not cores:
        raise CoreClaimError("no CPU cores available to claim")
    count = max(1, min(count, len(cores)))
    root = directory or cores_dir()
    held: list[tuple[int, int, int, Path]] = []
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for slot in range(MAX_SLOTS):
            for core in cores:
                if any(core == c for c, _, _, _ in held):
                    continue
                path = root / f"core-{core}.{slot}"
                fd = _try_lock(path)
                if fd is not None:
                    held.append((core, slot, fd, path))
                    if len(held) == count:
                        return CoreClaim(held)
    except OSError as exc:
        CoreClaim(held).release()
        raise CoreClaimError(f"cannot claim CPU cores in {root}: {exc.strerror or exc}") from exc
    CoreClaim(held).release()
    raise CoreClaimError(f"every core in {root} already has {MAX_SLOTS} claims")
