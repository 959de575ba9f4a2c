"""Settings from the environment: one typed place, checked once at start-up."""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the message names it."""


def _number(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None


def _positive_float(name: str, raw: str) -> float:
    value = _number(name, raw)
    if not value > 0:
        raise SettingsError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _linger(name: str, raw: str) -> float:
    value = _number(name, raw)
    if not 0 <= value <= 0.1:
        raise SettingsError(f"{name} must be 0 (off) to 0.1 seconds, got {raw!r}")
    return value


def _lag_limit(name: str, raw: str) -> float:
    value = _number(name, raw)
    if value < 0:
        raise SettingsError(f"{name} must be 0 (off) or more seconds, got {raw!r}")
    return value


def _positive_int(name: str, raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be greater than 0, got {raw!r}")
    return value


def _text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value:
        raise SettingsError(f"{name} must not be empty")
    return value


def _comma_list(name: str, raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _origins(name: str, raw: str) -> list[str] | None:
    """Empty (or commas only) is unset: same origin only. python-engineio reads an empty
    list as "no CORS handling at all", which would let every origin in."""
    return _comma_list(name, raw) or None


def _addresses(name: str, raw: str) -> list[str]:
    addresses = _comma_list(name, raw)
    for address in addresses:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(f"{name} must be host:port[,host:port...], got {address!r}")
    if not addresses:
        raise SettingsError(f"{name} must name at least one host:port")
    return addresses


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError(f"{name} must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {raw!r}")
    return value


def _cert_reqs(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"none", "optional", "required"}:
        raise SettingsError(f"{name} must be none, optional or required, got {raw!r}")
    return value


def _flag(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value not in {"0", "1", "true", "false", "yes", "no"}:
        raise SettingsError(f"{name} must be 1 or 0 (true/false, yes/no), got {raw!r}")
    return value in {"1", "true", "yes"}


HOOK_EVENTS = frozenset({"connect", "join", "send"})


def _hook_events(name: str, raw: str) -> str:
    events = {e.lower() for e in _comma_list(name, raw)}
    if not events or not events <= HOOK_EVENTS:
        raise SettingsError(f"{name} must name some of connect, join, send, got {raw!r}")
    return ",".join(e for e in ("connect", "join", "send") if e in events)


def _hook_failure(name: str, raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"closed", "open"}:
        raise SettingsError(f"{name} must be closed (refuse) or open (allow), got {raw!r}")
    return value


def _header_names(name: str, raw: str) -> str:
    return ",".join(sorted({h.lower() for h in _comma_list(name, raw)}))


def _webhook_secret(name: str, raw: str) -> str:
    """Standard Webhooks' form: `whsec_` and the key in base64 (24 to 64 bytes)."""
    value = raw.strip()
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True) if value.startswith("whsec_") else b""
    except binascii.Error:
        key = b""
    if not 24 <= len(key) <= 64:
        raise SettingsError(
            f"{name} must be whsec_ and 24 to 64 bytes in base64: make one with `python -c 'import base64, "
            'secrets; print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\'`'
        )
    return value


def _key_prefix(name: str, raw: str) -> str:
    value = _text(name, raw)
    if any(c in value for c in "*?[]{}\\ ") or not value.isprintable():
        raise SettingsError(f"{name} must not contain spaces, glob characters or braces, got {raw!r}")
    return value


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "float": _positive_float,
    "int": _positive_int,
    "str": _text,
    "str | None": _text,
    "float | None": _positive_float,
    "list[str] | None": _comma_list,
}


def _setting(default: Any, parser: Callable[[str, str], Any] | None = None, **kw: Any) -> Any:
    return field(default=default, metadata={"parser": parser}, **kw)


@dataclass(frozen=True)
class Settings:
    """Every knob of a node. Field names are the environment variables, upper-cased."""

    redis_url: str | None = None
    redis_sentinels: list[str] | None = _setting(None, _addresses)  # noqa: RUF009 (immutable default)
    redis_sentinel_master: str = "mymaster"
    redis_cluster_nodes: list[str] | None = _setting(None, _addresses)  # noqa: RUF009 (immutable default)
    # For rediss:// URLs a provider hands out and rotates (Heroku): `none` accepts its
    # self-signed certificate without editing REDIS_URL. A `ssl_cert_reqs` in the URL wins.
    redis_ssl_cert_reqs: str | None = _setting(None, _cert_reqs)
    # Sentinel and Cluster have no URL to carry these: the data servers' ACL user and password,
    # the Sentinels' own (Sentinel's `requirepass`), and TLS to all of them.
    redis_username: str | None = None
    redis_password: str | None = None
    redis_sentinel_username: str | None = None
    redis_sentinel_password: str | None = None
    redis_tls: bool = _setting(False, _flag)
    redis_tls_ca_file: str | None = None
    instance_id: str = field(default_factory=lambda: secrets.token_hex(6))
    key_prefix: str = _setting("chat", _key_prefix)
    presence_ttl: float = 30.0
    heartbeat_interval: float = 10.0
    history_length: int = 100
    send_deadline: float = 5.0
    publish_linger: float = _setting(0.005, _linger)
    # Past this many seconds of lag (chat_app.load) a node refuses a share of new sends
    # `overloaded`, all of them at twice that; 0: never.
    overload_lag: float = _setting(0.04, _lag_limit)
    max_message_bytes: int = 4096
    max_rooms_per_connection: int = 50
    max_directs_per_user: int = 100  # a user's list of direct conversations keeps the newest
    max_client_queue: int = 1000
    # Seconds; Engine.IO announces them in whole milliseconds (0.3 -> 300).
    ping_interval: float = 25.0
    ping_timeout: float = 20.0
    # A session that has not completed a Socket.IO CONNECT this long after it opened is
    # closed: without it, one that only answers pings holds a connection slot for ever.
    connect_timeout: float = 10.0
    # Largest websocket message or polling POST body (engine.io's maxPayload): bigger
    # frames are refused off their header, before they are read (chat_app.transport.frames).
    max_payload_bytes: int = 2 * 1024 * 1024
    send_rate: float = 20.0
    send_burst: int = 40
    join_rate: float = 5.0
    join_burst: int = 20
    leave_rate: float = 5.0
    leave_burst: int = 20
    # list_directs costs up to 2 * MAX_DIRECTS_PER_USER reads; a page asks once per connect.
    list_directs_rate: float = 1.0
    list_directs_burst: int = 5
    # search and history pages: each may be a query on the archive.
    search_rate: float = 2.0
    search_burst: int = 10
    reconnect_backoff_base: float = 0.05
    reconnect_backoff_cap: float = 2.0
    listener_idle_probe: float = 5.0
    probe_timeout: float = 2.0
    redis_socket_timeout: float = 5.0
    # Redis Cluster: how often a node compares the cluster's slot map with its own, so that a
    # promoted replica is followed even by a part that has not yet failed against the old one.
    cluster_check_interval: float = 1.0
    presence_grace: float = 2.0
    # Rooms of more users get a periodic count (at most one per interval) instead of an event
    # per join and leave; join acks name at most this many members.
    presence_events_max_members: int = 100
    presence_count_interval: float = 2.0
    # Seconds a presence event may wait for more frames to the same socket, to go out in one
    # write with them, when that socket was told one within the last one to two of these (a
    # join storm in its room); 0: every one written at once.
    presence_linger: float = _setting(0.1, _linger)
    auth_secret: str | None = None
    auth_issuer: str | None = None  # set: a token's `iss` must be this
    auth_audience: str | None = None  # set: a token's `aud` must name this; unset: a token with `aud` is refused
    api_key: str | None = None  # the server API (HTTP) is off without it
    cors_allowed_origins: list[str] | None = _setting(None, _origins)  # noqa: RUF009 (immutable default)
    log_level: str = _setting("INFO", _log_level)
    # The archive (chat_app/archive/): PostgreSQL keeps every message; Redis the live window.
    database_url: str | None = None
    archive_retention_days: float | None = None  # unset: keep every message for good
    # How long a quiet room's epoch and seq outlive its other Redis keys (two small keys a
    # room), so that its next message continues the archived stream. Unset: for good. A room
    # quiet for longer starts a new epoch (its archived history stays readable).
    archive_position_days: float | None = None
    # Messages Redis holds for the archive while the database is away (at ~0.5 KiB each, the
    # default is ~0.5 GiB of Redis memory, 16 minutes at 1,000 msg/s); past it the oldest go.
    archive_outbox_max: int = 1_000_000
    archive_batch: int = 500  # messages a writer takes from the outbox per round
    archive_pool_size: int = 4  # database connections per node
    # A batch a writer read and has not stored this long after: its node died; another takes it.
    archive_take_over_after: float = 15.0
    # Decision hooks (chat_app/hooks/): the product's backend answers connect, join and send.
    hook_url: str | None = None
    hook_events: str = _setting("connect,join,send", _hook_events)
    hook_timeout: float = 1.0
    hook_failure: str = _setting("closed", _hook_failure)  # a hook that fails: refuse (closed) or allow
    hook_secret: str | None = _setting(None, _webhook_secret)
    hook_headers: str | None = _setting(None, _header_names)  # request headers sent with connect (cookie, ...)
    hook_concurrency: int = 64  # calls in flight per node; past it, the HOOK_FAILURE answer
    # Webhooks (chat_app/hooks/webhooks.py): what happened, signed, from the archive's outbox.
    webhook_url: str | None = None
    webhook_secret: str | None = _setting(None, _webhook_secret)
    webhook_timeout: float = 5.0
    webhook_max_attempts: int = 8  # then the event is kept as failed (metrics, replay)
    webhook_backoff: float = 2.0  # seconds before the first retry; doubles up to 10 minutes

    def __post_init__(self) -> None:
        if self.auth_secret is not None and len(self.auth_secret.encode()) < 32:
            raise SettingsError("AUTH_SECRET must be at least 32 bytes (HS256 keys shorter than the hash are weak)")
        if self.api_key is not None and len(self.api_key.encode()) < 32:
            raise SettingsError(
                "API_KEY must be at least 32 bytes: make one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
            )
        if self.redis_url and (self.redis_username or self.redis_password or self.redis_tls):
            raise SettingsError(
                "REDIS_USERNAME, REDIS_PASSWORD and REDIS_TLS are for Sentinel and Cluster: "
                "put them in REDIS_URL (redis://user:password@host/0, rediss:// for TLS)"
            )
        if self.cors_allowed_origins is not None and not self.cors_allowed_origins:
            raise SettingsError("CORS_ALLOWED_ORIGINS must name an origin (or `*`), or be unset: same origin only")
        if self.database_url and self.redis_cluster_nodes:
            raise SettingsError(
                "DATABASE_URL (the archive) runs with REDIS_URL or REDIS_SENTINELS; not yet with a Redis Cluster"
            )
        if self.database_url and not self.uses_redis:
            raise SettingsError(
                "DATABASE_URL (the archive) needs REDIS_URL or REDIS_SENTINELS: its outbox and room "
                "positions live in Redis"
            )
        if self.webhook_url and not self.database_url:
            raise SettingsError("WEBHOOK_URL needs the archive (DATABASE_URL): webhooks are sent from its outbox")
        if self.heartbeat_interval >= self.presence_ttl:
            raise SettingsError(
                f"HEARTBEAT_INTERVAL ({self.heartbeat_interval}) must be shorter than "
                f"PRESENCE_TTL ({self.presence_ttl}), else live entries expire between beats"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read every field from `env` (default: os.environ); `overrides` win (tests)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.name.upper())
            if raw is None or raw == "":
                continue
            parser = f.metadata.get("parser") or _PARSERS[str(f.type)]
            values[f.name] = parser(f.name.upper(), raw)
        values.update(overrides)
        return cls(**values)

    @property
    def transport_max_bytes(self) -> int:
        """MAX_PAYLOAD_BYTES, raised to 8 x MAX_MESSAGE_BYTES when that is more: a message as
        long as allowed, escaped in JSON (up to 6 bytes a character), must fit in a frame."""
        return max(self.max_payload_bytes, 8 * self.max_message_bytes)

    @property
    def uses_redis(self) -> bool:
        return any(x is not None for x in (self.redis_url, self.redis_sentinels, self.redis_cluster_nodes))

    @property
    def redis_room_ttl_ms(self) -> int:
        """Room keys outlive a presence entry so a crashed node's users can still be read."""
        return int(self.presence_ttl * 2000)

    @property
    def archive_marker(self) -> str:
        """The value of the archive's marker key in Redis (common.lua archive_conf)."""
        return f"{self.archive_position_ttl_ms} {self.archive_outbox_max}"

    @property
    def archive_position_ttl_ms(self) -> int:
        """0: a room's position is kept for good."""
        return int((self.archive_position_days or 0) * 86_400_000)
