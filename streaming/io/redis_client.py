"""Thin redis-py adapter: one place that builds clients from settings and translates errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from streaming.errors import ConfigError, StoreError
from streaming.settings import RedisSettings

T = TypeVar("T")


def as_text(value: bytes | str) -> str:
    """A Redis reply element as text (clients here return bytes)."""
    return value.decode() if isinstance(value, bytes) else value


def client_kwargs(settings: RedisSettings, *, decode_responses: bool = False) -> dict[str, Any]:
    """Connection options for sync and asyncio clients alike."""
    if not settings.url:
        raise ConfigError(
            "no Redis URL: set REDIS_URL, or run `streamrec up` "
            "(its endpoints are picked up automatically)"
        )
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.socket_timeout_s,
        "decode_responses": decode_responses,
        "health_check_interval": 30,
    }
    if settings.password:
        kwargs["password"] = settings.password
    if settings.username:
        kwargs["username"] = settings.username
    if settings.url.startswith("rediss://") and settings.ssl_ca_certs:
        kwargs["ssl_ca_certs"] = settings.ssl_ca_certs
    return kwargs


def connect(settings: RedisSettings, *, decode_responses: bool = False) -> redis.Redis:
    """A client for ``settings.url`` with password / TLS options applied. Does not connect yet."""
    kwargs = client_kwargs(settings, decode_responses=decode_responses)
    try:
        return redis.Redis.from_url(settings.url, **kwargs)
    except ValueError as exc:
        raise ConfigError(f"redis.url={settings.url!r}: {exc}") from None


def call(fn: Callable[[], T], what: str) -> T:
    """Run one Redis operation, translating redis-py errors to :class:`StoreError`."""
    try:
        return fn()
    except redis.AuthenticationError as exc:
        raise StoreError(f"Redis authentication failed during {what}: {exc}") from None
    except redis.RedisError as exc:
        raise StoreError(f"Redis error during {what}: {exc}") from None


def wait_ready(client: redis.Redis, timeout_s: float = 30.0) -> None:
    """Block until PING succeeds."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if client.ping():
                return
        except redis.AuthenticationError as exc:
            raise StoreError(f"Redis authentication failed: {exc}") from None
        except redis.RedisError as exc:
            last = exc
        time.sleep(0.05)
    raise StoreError(f"Redis not reachable within {timeout_s:.0f} s: {last}")
