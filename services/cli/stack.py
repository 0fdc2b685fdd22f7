"""The composition root for running several services in one process (`kushim up`, `kushim demo`, `kushim serve`).

This package is the only one allowed to import every service.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.collector_cloudtrail.app import create_service as create_cloudtrail
from services.collector_iam.app import create_service as create_iam
from services.collector_s3.app import create_service as create_s3
from services.evidence.app import create_service as create_evidence
from services.evidence.store import EvidenceStore
from services.scheduler.app import create_service as create_scheduler
from shared.aws import AwsClients, classify_error
from shared.credentials import default_clients
from shared.embedded import EmbeddedNats, start_nats
from shared.observability import Observability
from shared.probes import HttpBinding, http_server
from shared.service import ServiceApp
from shared.settings import Settings

log = structlog.get_logger(__name__)

ServiceFactory = Callable[..., ServiceApp]

SERVICES: dict[str, ServiceFactory] = {
    "evidence": create_evidence,
    "collector-iam": create_iam,
    "collector-s3": create_s3,
    "collector-cloudtrail": create_cloudtrail,
    "scheduler": create_scheduler,
}
"""Every service `kushim serve` can run, in start-up order (consumers first, the scheduler last)."""


@dataclass
class Stack:
    url: str
    apps: list[ServiceApp]
    nats: EmbeddedNats | None


@contextlib.asynccontextmanager
async def running_stack(
    settings: Settings,
    *,
    services: Sequence[str] = tuple(SERVICES),
    nats_store: Path | None = None,
    aws: AwsClients | None = None,
    migrate: bool = False,
    observability: Observability | None = None,
    http: HttpBinding | None = None,
) -> AsyncIterator[Stack]:
    """Start a nats-server (unless settings name one) and the given services; stop everything on exit.

    `migrate`: bring the evidence database to this Kushim's schema first (`up` and `demo` own their embedded
    database; `serve` leaves that to `kushim db upgrade` and refuses an unmigrated schema).
    `observability`: the process's metrics registry and tracer provider (default: metrics only, no tracing).
    `http`: serve /healthz, /readyz and /metrics there, from before the services start until after they stopped
    (alive while starting, ready once every service is started and connected).
    """
    obs = observability or Observability()
    obs.expect(services)
    async with contextlib.AsyncExitStack() as exits:
        if http is not None:
            await exits.enter_async_context(http_server(obs, http))
        async with _services(settings, services, nats_store=nats_store, aws=aws, migrate=migrate, obs=obs) as stack:
            yield stack


@contextlib.asynccontextmanager
async def _services(
    settings: Settings,
    services: Sequence[str],
    *,
    nats_store: Path | None,
    aws: AwsClients | None,
    migrate: bool,
    obs: Observability,
) -> AsyncIterator[Stack]:
    if migrate and "evidence" in services:
        await migrate_database(settings)
    embedded: EmbeddedNats | None = None
    url = settings.nats_url
    if url is None:
        embedded = start_nats(nats_store or settings.home / "jetstream")
        url = embedded.url
        log.info("nats_started", url=url, store=str(embedded.store_dir))
    aws = aws or default_clients(settings)
    apps: list[ServiceApp] = []
    try:
        for name in services:
            app = SERVICES[name](settings, url=url, aws=aws, observability=obs)
            obs.track(app)
            await app.start()
            apps.append(app)
        yield Stack(url=url, apps=apps, nats=embedded)
    finally:
        for app in reversed(apps):
            try:
                await app.stop()
            except Exception as exc:  # keep stopping the others
                log.error("service_stop_failed", service=app.name, error=str(exc))
        if embedded is not None:
            embedded.stop()


async def migrate_database(settings: Settings) -> None:
    """`kushim db upgrade`: apply the evidence database's pending migrations."""
    store = EvidenceStore(settings.effective_database_url)
    try:
        await store.migrate()
    finally:
        await store.close()


class PreflightError(Exception):
    """The stack cannot work with these settings; the message says what to change."""


async def preflight(settings: Settings, aws: AwsClients) -> str:
    """Before starting anything: which account do these credentials belong to? (sts:GetCallerIdentity)"""
    try:
        return await aws.caller_account()
    except Exception as exc:
        err = classify_error("sts", "GetCallerIdentity", exc)
        if err.code == "NoCredentials":
            raise PreflightError(
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, "
                "or run where an IAM role is available (IRSA / Pod Identity / instance profile)"
            ) from None
        raise PreflightError(f"cannot identify the AWS account: {err.describe()}") from None
