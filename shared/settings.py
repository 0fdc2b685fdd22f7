"""Settings, read from the environment (and an optional `.env` file) in one place: `Settings()`.

Our own settings use the `KUSHIM_` prefix. The AWS ones keep the names of the integration guide
(`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_S3_BUCKET_NAME`) plus `AWS_ENDPOINT_URL`.
`AWS_REGION` is mapped explicitly: botocore itself only reads `AWS_DEFAULT_REGION`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.controls import MfaScope

ALL_REGIONS = "all"
REGION_PATTERN = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]")


def _default_home() -> Path:
    return Path.home() / ".kushim"


LOOPBACK_HOSTS = frozenset({"localhost", "::1"})


class Settings(BaseSettings):
    """Every setting Kushim reads. `kushim settings` prints this table; the README documents it."""

    model_config = SettingsConfigDict(
        env_prefix="KUSHIM_",
        env_file=".env",
        extra="ignore",
        hide_input_in_errors=True,
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    # --- messaging ------------------------------------------------------------------------
    nats_url: str | None = Field(
        None,
        description="NATS server URL (nats://host:port; comma-separated for a cluster). Unset: `kushim up`/`demo` "
        "start an embedded nats-server on a free loopback port; `kushim serve` requires it. Off loopback it must carry "
        "credentials (nats://<user>:<password>@host:4222, users of deploy/nats/nats-server.conf).",
    )
    home: Path = Field(
        default_factory=_default_home,
        description="Data directory of `kushim up`: database, JetStream store and the state file other commands read.",
    )
    accounts_file: Path | None = Field(
        None,
        description="The account registry (TOML): accounts, their access (default chain, AssumeRole with an "
        "ExternalId, Secrets Manager), regions, schedules and tenants. Unset: $KUSHIM_HOME/accounts.toml. No file: "
        "the one account the credentials belong to. Edited by `kushim accounts`; re-read when it changes.",
    )
    declare_topology: bool = Field(
        True,
        description="Whether a service creates or updates the JetStream streams and durable consumers at start. "
        "false: they must exist already (`kushim nats init`, run by an administrator); the service only checks them, "
        "so its NATS user needs no right to create, change or delete streams.",
    )
    max_deliver: int = Field(5, ge=2, le=20, description="Deliveries of one message before it is dead-lettered.")
    ack_wait_seconds: float = Field(60.0, gt=0, description="Seconds a consumer may hold a message before redelivery.")
    retry_delay_seconds: float = Field(2.0, ge=0, description="Base delay before a failed message is redelivered.")
    handler_timeout_seconds: float = Field(
        900.0, gt=0, description="Longest one message may be worked on (a scan included) before it counts as failed."
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="On SIGTERM or Ctrl-C, seconds a service waits for the messages it is working on (a scan) to "
        "finish and be acked. What is still running then is handed back: stopped and nacked at once, so another "
        "replica takes it without waiting for ack_wait (it costs one of KUSHIM_MAX_DELIVER). Keep it below the pod's "
        "terminationGracePeriodSeconds.",
    )
    duplicate_window_seconds: float = Field(600.0, gt=0, description="JetStream de-duplication window for Nats-Msg-Id.")
    stream_replicas: int = Field(
        1,
        ge=1,
        le=5,
        description="Copies JetStream keeps of each Kushim stream and key-value bucket: 1 on a single nats-server "
        "(the embedded one); 3 on a JetStream cluster of 3 or more servers, so losing one loses nothing. Applied by "
        "`kushim nats init` (or a service declaring the topology) to the streams and the existing key-value buckets, "
        "and by the scheduler when it creates its buckets.",
    )
    chunk_max_bytes: int = Field(
        256 * 1024, ge=16 * 1024, le=900 * 1024, description="Maximum size of one FindingsReported chunk."
    )

    # --- scheduling ------------------------------------------------------------------------
    schedule: str = Field("0 2 * * *", description="Cron expression of the scheduled run (KUSHIM_SCHEDULE_TIMEZONE).")
    schedule_timezone: str = Field(
        "UTC", description="IANA time zone of the schedule (e.g. Europe/Berlin); slots follow its daylight saving."
    )
    schedule_enabled: bool = Field(True, description="Whether the scheduler publishes scheduled runs.")
    schedule_catch_up_seconds: float = Field(
        21_600.0,
        ge=0,
        description="A scheduler that was down over a slot runs the latest missed slot once when it comes back, if it "
        "is at most this old (never older ones, never a burst); 0: no catch-up.",
    )
    run_deadline_seconds: float = Field(
        900.0, gt=0, description="Seconds after planning when a run still missing results becomes INCOMPLETE."
    )
    coalesce: bool = Field(
        True,
        description="Coalesce identical run requests (same tenant, accounts, services and regions): while such a run "
        "is in flight, a request joins it instead of scanning again and gets its RunCompleted under its own "
        "request_id. A new run starts once the one in flight completed.",
    )
    coalesce_window_seconds: float = Field(
        30.0,
        ge=0,
        description="How long after a run was planned an identical request may still join it; later requests start a "
        "new run (its scans may have read AWS before the request was made).",
    )
    regions: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated regions the collectors inspect (CloudTrail), or `all`: every region enabled for "
        "the account (ec2:DescribeRegions, at each run). Empty: the configured AWS region.",
    )

    # --- checks ----------------------------------------------------------------------------
    mfa_scope: MfaScope = Field(
        "all", description="Users whose missing MFA fails CC6.1: `all` IAM users, or only `console` users."
    )
    aws_concurrency: int = Field(8, ge=1, le=64, description="Concurrent AWS calls per scan.")
    access_key_max_age_days: int = Field(
        90,
        ge=1,
        le=3650,
        description="Access keys older (or unused for longer) than this many days fail the key checks.",
    )
    lookup_events_rate: float = Field(
        2.0, gt=0, le=2.0, description="CloudTrail LookupEvents requests per second per account and region (AWS: 2)."
    )

    # --- evidence --------------------------------------------------------------------------
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the findings database. Unset: SQLite at $KUSHIM_HOME/kushim.db "
        "(sqlite+aiosqlite:///...).",
    )
    evidence_kms_key_id: str | None = Field(
        None, description="KMS key for SSE-KMS evidence objects; unset: SSE-S3 (AES256)."
    )
    evidence_object_lock_mode: Literal["GOVERNANCE", "COMPLIANCE"] | None = Field(
        None,
        description="S3 Object Lock retention for evidence objects and manifests (the bucket must have Object Lock "
        "enabled, checked at start); unset: no per-object retention (a bucket default retention still applies).",
    )
    evidence_object_lock_days: int = Field(
        365, ge=1, le=36500, description="Object Lock retention in days, counted from the run's requested_at."
    )
    deadline_poll_seconds: float = Field(2.0, gt=0, description="How often the evidence service checks deadlines.")

    # --- logging ---------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["console", "json"] = Field("console", description="`console` for people, `json` for machines.")

    # --- observability ---------------------------------------------------------------------
    http_host: str | None = Field(
        None,
        description="Address of the HTTP server (/healthz, /readyz, /metrics). Unset: 0.0.0.0 for `kushim serve` "
        "(probes and scrapes come from outside the container), 127.0.0.1 for `kushim up`.",
    )
    http_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port of the HTTP server (/healthz, /readyz, /metrics). Unset: 8080 for `kushim serve`, no server "
        "for `kushim up` (set it to get one); 0: no server. `kushim demo` never starts one.",
    )
    tracing: Literal["none", "console", "otlp"] = Field(
        "none",
        description="OpenTelemetry tracing of the services: `none`; `console` (spans as JSON on stdout); `otlp` "
        "(over HTTP: the `otlp` extra, pip install 'kushim[otlp]', in the image; over gRPC: the "
        "opentelemetry-exporter-otlp-proto-grpc package and OTEL_EXPORTER_OTLP_PROTOCOL=grpc; "
        "endpoint and headers from the standard OTEL_EXPORTER_OTLP_* variables, service name from OTEL_SERVICE_NAME).",
    )

    # --- AWS (the integration guide's names) -----------------------------------------------
    aws_region: str = Field(
        "us-east-1",
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS_REGION (or AWS_DEFAULT_REGION): region of API calls and of the evidence bucket.",
    )
    aws_access_key_id: SecretStr | None = Field(
        None, validation_alias="AWS_ACCESS_KEY_ID", description="AWS_ACCESS_KEY_ID; unset: default credential chain."
    )
    aws_secret_access_key: SecretStr | None = Field(
        None, validation_alias="AWS_SECRET_ACCESS_KEY", description="AWS_SECRET_ACCESS_KEY."
    )
    aws_session_token: SecretStr | None = Field(
        None, validation_alias="AWS_SESSION_TOKEN", description="AWS_SESSION_TOKEN for temporary credentials."
    )
    aws_profile: str | None = Field(None, validation_alias="AWS_PROFILE", description="AWS_PROFILE to use.")
    aws_secret_id: str | None = Field(
        None,
        description="AWS Secrets Manager secret (name or ARN) holding the access keys as JSON (AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY); read with the default chain (e.g. IRSA) and re-read every 15 minutes. Unset: "
        "the default chain's own credentials.",
    )
    aws_endpoint_url: str | None = Field(
        None,
        validation_alias="AWS_ENDPOINT_URL",
        description="AWS_ENDPOINT_URL: send every AWS client to this endpoint (moto, LocalStack).",
    )
    evidence_bucket: str | None = Field(
        None,
        validation_alias="AWS_S3_BUCKET_NAME",
        description="AWS_S3_BUCKET_NAME: evidence bucket (kushim-evidence-storage-*); unset: evidence stays in the "
        "database.",
    )

    @field_validator("nats_url")
    @classmethod
    def _credentials_off_loopback(cls, value: str | None) -> str | None:
        """Only a broker on this machine may be used without credentials (the embedded default)."""
        if value is None:
            return value
        for server in (part.strip() for part in value.split(",") if part.strip()):
            parts = urlsplit(server if "://" in server else f"nats://{server}")
            host = parts.hostname or ""
            if host in LOOPBACK_HOSTS or host.startswith("127."):
                continue
            if not (parts.username or parts.password):
                raise ValueError(
                    f"the broker {host} is not on this machine and the URL carries no credentials: use "
                    "nats://<user>:<password>@host:4222 with a user of deploy/nats/nats-server.conf (only a loopback "
                    "broker may run without authentication)"
                )
        return value

    @field_validator("schedule_timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin, Asia/Tokyo)") from None
        return value

    @field_validator("schedule")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        if len(value.split()) != 5 or not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid 5-field cron expression (minute hour day month weekday)")
        return value

    @field_validator("regions", mode="before")
    @classmethod
    def _split_regions(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("regions")
    @classmethod
    def _valid_regions(cls, value: list[str]) -> list[str]:
        if value == [ALL_REGIONS]:
            return value
        bad = [region for region in value if not REGION_PATTERN.fullmatch(region)]
        if bad:
            raise ValueError(f"not AWS region names: {', '.join(bad)} (expected e.g. us-east-1,eu-west-1)")
        return value

    @property
    def all_regions(self) -> bool:
        """`KUSHIM_REGIONS=all`: the regions enabled for the account, discovered at each run."""
        return self.regions == [ALL_REGIONS]

    @property
    def scan_regions(self) -> list[str]:
        """The configured regions (with `all`, the configured AWS region stands in until discovery)."""
        return list(self.regions) if self.regions and not self.all_regions else [self.aws_region]

    @property
    def registry_path(self) -> Path:
        return self.accounts_file if self.accounts_file is not None else self.home / "accounts.toml"

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.home / 'kushim.db'}"


def setting_env_names() -> dict[str, list[str]]:
    """Each setting's environment variables, by field name: KUSHIM_<FIELD>, or its own names (AWS_REGION and
    AWS_DEFAULT_REGION, say). What `kushim settings` lists and the docs and deployment files are checked against."""
    names: dict[str, list[str]] = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if alias is None:
            names[name] = [f"KUSHIM_{name.upper()}"]
        elif isinstance(alias, AliasChoices):
            names[name] = [str(choice) for choice in alias.choices]
        else:
            names[name] = [str(alias)]
    return names
