"""Per-client rate limits of the HTTP API: token buckets for requests and tokens per minute.

Each client key (the request's ``user``, else its API key, else its
address: :func:`client_key`) gets two buckets, off unless configured:

* requests per minute: one token per completion request;
* tokens per minute: a request is charged its estimated prompt tokens plus
  ``max_tokens`` up front (what OpenAI's limits count), and the difference
  to the tokens it really cost (for ``model: dellm`` every peer request of
  the question, samples included) once it is answered, so a client whose
  questions cost more than estimated waits longer next time.

A bucket holds at most one minute's allowance and refills continuously
(the token bucket of Turner 1986, "New directions in communications",
IEEE Communications Magazine 24(10)); a request that finds too little
waits for nothing: it is refused with 429 and the seconds until the bucket
holds enough (``Retry-After``).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass


class RateLimited(Exception):
    """A client's bucket is empty; retry after :attr:`retry_after_s` [s] (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TokenBucket:
    """``per_minute`` tokens a minute, at most ``per_minute`` saved up; starts full.

    ``level`` may go below 0 after :meth:`charge` (a debt repaid by the refill).

    Args:
        per_minute: refill rate and capacity [tokens/min], > 0.
        clock: monotonic time source [s].
    """

    def __init__(self, per_minute: float, clock: Callable[[], float] = time.monotonic):
        if per_minute <= 0:
            raise ValueError("per_minute must be positive")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # [tokens/s]
        self.level = self.capacity
        self._clock = clock
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self.level = min(self.capacity, self.level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_s(self, amount: float) -> float:
        """Seconds until ``amount`` tokens are in the bucket (0: now; ``inf``: never, over capacity)."""
        self._refill()
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level) / self.rate)

    def take(self, amount: float) -> bool:
        """Take ``amount`` tokens if the bucket holds them; False (taking nothing) otherwise."""
        if self.wait_s(amount) > 0:
            return False
        self.level -= amount
        return True

    def charge(self, amount: float) -> None:
        """Take ``amount`` (negative: give back) unconditionally; the level may go below 0."""
        self._refill()
        self.level = min(self.capacity, self.level - amount)


@dataclass(frozen=True)
class RateLimits:
    """Per-client limits (``None``: off).

    Attributes:
        requests_per_minute: completion requests a client may send a minute.
        tokens_per_minute: prompt plus completion tokens a client's requests
            may cost a minute (every peer request of a ``model: dellm`` question).
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    @property
    def enabled(self) -> bool:
        return self.requests_per_minute is not None or self.tokens_per_minute is not None


class Limiter:
    """The buckets of every client key under :class:`RateLimits`.

    Args:
        limits: the per-client limits.
        max_clients: keys kept; beyond, the fullest buckets (idle clients) are forgotten.
        clock: monotonic time source [s].
    """

    def __init__(self, limits: RateLimits, *, max_clients: int = 10_000, clock: Callable[[], float] = time.monotonic):
        for name in ("requests_per_minute", "tokens_per_minute"):
            value = getattr(limits, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")
        self.limits = limits
        self.max_clients = max_clients
        self._clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._tokens: dict[str, TokenBucket] = {}
        self.refused = 0

    def _bucket(self, buckets: dict[str, TokenBucket], key: str, per_minute: float) -> TokenBucket:
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_clients:  # forget one idle client (its bucket is full again)
                idle = next((k for k, b in buckets.items() if b.wait_s(b.capacity) == 0), None)
                buckets.pop(idle if idle is not None else next(iter(buckets)))
            bucket = buckets[key] = TokenBucket(per_minute, self._clock)
        return bucket

    def admit(self, key: str, tokens: int) -> int:
        """Charge one request of ``tokens`` estimated tokens to ``key``; returns the tokens charged.

        Raises:
            RateLimited: a bucket of ``key`` holds too little now (nothing is charged then).
        """
        limits = self.limits
        requests = tokens_bucket = None
        if limits.requests_per_minute is not None:
            requests = self._bucket(self._requests, key, limits.requests_per_minute)
            if (wait := requests.wait_s(1)) > 0:
                self.refused += 1
                raise RateLimited(
                    f"rate limit: {limits.requests_per_minute:g} requests per minute for this client; "
                    f"retry in {math.ceil(wait)} s",
                    math.ceil(wait),
                )
        if limits.tokens_per_minute is not None:
            tokens_bucket = self._bucket(self._tokens, key, limits.tokens_per_minute)
            wait = tokens_bucket.wait_s(tokens)
            if wait == math.inf:
                self.refused += 1
                raise RateLimited(
                    f"rate limit: this request may cost {tokens:,} tokens, more than the "
                    f"{limits.tokens_per_minute:g} tokens per minute this client may use; lower max_tokens",
                    60,
                )
            if wait > 0:
                self.refused += 1
                raise RateLimited(
                    f"rate limit: {limits.tokens_per_minute:g} tokens per minute for this client; "
                    f"retry in {math.ceil(wait)} s",
                    math.ceil(wait),
                )
        if requests is not None:
            requests.charge(1)
        if tokens_bucket is not None:
            tokens_bucket.charge(tokens)
        return tokens if tokens_bucket is not None else 0

    def settle(self, key: str, charged: int, used: int) -> None:
        """A request of ``key`` charged ``charged`` tokens really cost ``used``: charge (or give back) the rest."""
        bucket = self._tokens.get(key)
        if bucket is not None and charged:
            bucket.charge(used - charged)


def client_key(user: str | None, authorization: str | None, address: str | None) -> str:
    """The key a request's queue share and limits count under: ``user:<user>``, else ``key:<hash of the
    bearer key>`` (never the key itself: keys end up in metrics and logs), else ``addr:<address>``."""
    if user:
        return f"user:{user[:128]}"
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:16]
    return f"addr:{address or 'unknown'}"
