"""Runtime settings, read from ``EVENTRELAY_*`` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretBytes, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.domain.portal import frame_ancestors
from app.domain.sealing import Keyring, parse_keys

DEFAULT_RETRY_SCHEDULE = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


class Settings(BaseSettings):
    """Everything the API, the worker and the CLI are configured with.

    Built once by the entry point and passed down; nothing reads the
    environment on its own.
    """

    # Inputs stay out of error messages: settings hold keys and passwords.
    model_config = SettingsConfigDict(
        env_prefix="EVENTRELAY_", extra="ignore", hide_input_in_errors=True
    )

    database_url: str = "sqlite+aiosqlite:///./eventrelay.db"
    admin_token: str | None = None
    allow_private_targets: bool = False
    require_idempotency_key: bool = True
    idempotency_ttl_seconds: int = Field(default=86400, ge=1)
    max_payload_bytes: int = Field(default=1_048_576, ge=1024)
    retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    delivery_timeout_ms: int = Field(default=15000, ge=1)
    retention_days: float = Field(default=7, gt=0)
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"
    access_log: bool = False
    # How many ingest transactions may be open at once. SQLite has one writer,
    # so more would only queue inside the driver; PostgreSQL overlaps them.
    ingest_writers: int | None = Field(default=None, ge=1, le=64)

    # Delivery worker tuning (the defaults suit most installations).
    worker_concurrency: int = Field(default=256, ge=1, le=10_000)
    worker_poll_seconds: float = Field(default=0.5, gt=0, le=60)
    lease_seconds: float = Field(default=30, ge=0.3)
    circuit_failure_threshold: int = Field(default=20, ge=1)
    circuit_cooldown_seconds: float = Field(default=30, gt=0)
    shutdown_grace_seconds: float = Field(default=10, ge=0)
    retention_interval_seconds: float = Field(default=60, gt=0)
    # `eventrelay worker` has no API; set this to serve its /metrics.
    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Secrets at rest: comma-separated base64 keys of 32 bytes; the first seals.
    encryption_keys: Annotated[tuple[SecretBytes, ...], NoDecode] = ()

    @field_validator("encryption_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return parse_keys(value) if isinstance(value, str) else value

    def keyring(self) -> Keyring:
        """The keys that seal and open stored secrets."""
        return Keyring([k.get_secret_value() for k in self.encryption_keys])

    # The console: the address links are built on (default: the request's own
    # scheme and host) and who may frame the tenant portal (CSP sources).
    public_url: str | None = Field(default=None, pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")
    portal_frame_ancestors: str = ""

    @field_validator("portal_frame_ancestors")
    @classmethod
    def _check_frame_ancestors(cls, value: str) -> str:
        frame_ancestors(value)
        return " ".join(value.split())

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",") if p.strip()]
            return tuple(float(p) for p in parts)
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _check_schedule(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(v < 0 for v in value):
            raise ValueError("retry delays must not be negative")
        return value
