"""aiobotocore session and client factory, API-call accounting and error classification.

Clients come from one `AwsClients` built at a composition root and passed down. `AWS_ENDPOINT_URL` (tests and the
demo point it at moto) is passed explicitly; service-specific `AWS_ENDPOINT_URL_<SERVICE>` variables are honoured by
botocore itself when it is unset.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager as AbstractClientCM
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, overload

import structlog
from aiobotocore.config import AioConfig
from aiobotocore.httpsession import AIOHTTPSession
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from shared.permissions import iam_action
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_cloudtrail import CloudTrailClient
    from types_aiobotocore_iam import IAMClient
    from types_aiobotocore_organizations import OrganizationsClient
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_secretsmanager import SecretsManagerClient
    from types_aiobotocore_sts import STSClient

log = structlog.get_logger(__name__)

ACCESS_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccessDeniedException",
        "UnauthorizedOperation",
        "UnauthorizedAccess",
        "AuthorizationError",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "AllAccessDisabled",
    }
)
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "SlowDown",
        "RequestLimitExceeded",
        "ProvisionedThroughputExceededException",
    }
)


class TransientAwsError(Exception):
    """An AWS failure worth retrying later (throttling, 5xx, connection): the message is redelivered with a delay."""


@dataclass(frozen=True, slots=True)
class AwsCallError:
    """A failed AWS call, as an ERROR finding reports it."""

    service: str
    operation: str
    code: str
    message: str
    permission: str
    transient: bool

    def describe(self) -> str:
        if self.code in ACCESS_DENIED_CODES:
            return f"{self.operation} was denied ({self.code}): grant {self.permission}"
        return f"{self.operation} failed ({self.code}): {self.message}"


def classify_error(service: str, operation: str, exc: BaseException) -> AwsCallError:
    """Turn a botocore exception into an `AwsCallError` (never a PASS)."""
    permission = iam_action(service, operation)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        message = str(err.get("Message", "")) or str(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        transient = code in THROTTLING_CODES or (status >= 500 and code not in {"NotImplemented", "500"})
        return AwsCallError(service, operation, code, message[:500], permission, transient)
    if isinstance(exc, NoCredentialsError):
        return AwsCallError(service, operation, "NoCredentials", "no AWS credentials found", permission, False)
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | ReadTimeoutError | asyncio.TimeoutError):
        return AwsCallError(service, operation, type(exc).__name__, str(exc)[:500], permission, True)
    if isinstance(exc, BotoCoreError):
        return AwsCallError(service, operation, type(exc).__name__, str(exc)[:500], permission, False)
    return AwsCallError(service, operation, type(exc).__name__, str(exc)[:500], permission, False)


def recorded_error(service: str, operation: str, exc: BaseException, **context: str) -> AwsCallError:
    """The error a collector records in its snapshot (an ERROR finding later); raises TransientAwsError instead when
    retrying later may succeed (throttling after botocore's retries, 5xx, connection)."""
    err = classify_error(service, operation, exc)
    if err.transient:
        log.warning("aws_call_transient", api_call=f"{service}:{operation}", code=err.code, **context)
        raise TransientAwsError(f"{service}:{operation} failed ({err.code}): {err.message}") from exc
    log.warning("aws_call_failed", api_call=f"{service}:{operation}", code=err.code, **context)
    return err


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


@dataclass(slots=True, eq=False)
class ApiCallCounter:
    """Counts AWS API requests by `service:Operation`, every attempt included (botocore's retries are requests
    too), through botocore's `before-send` event.

    `on_result(api, ok)`, when given, hears the end of every API call (botocore's `after-call` / `after-call-error`
    events: once per call, after its retries): ok when AWS answered below HTTP 300."""

    counts: Counter[str] = field(default_factory=Counter)
    on_result: Callable[[str, bool], None] | None = None

    def __call__(self, *, event_name: str = "", **_: Any) -> None:
        # event_name is "before-send.<service>.<Operation>"; returning None lets the request go out.
        parts = event_name.split(".")
        if len(parts) >= 3:
            self.counts[f"{parts[1]}:{parts[2]}"] += 1

    def result(self, *, event_name: str = "", http_response: Any = None, **_: Any) -> None:
        """botocore's `after-call.<service>.<Operation>` (with the HTTP response) and `after-call-error.<service>.
        <Operation>` (an exception: no answer) events."""
        parts = event_name.split(".")
        if self.on_result is None or len(parts) < 3:
            return
        ok = parts[0] == "after-call" and http_response is not None and int(http_response.status_code) < 300
        self.on_result(f"{parts[1]}:{parts[2]}", ok)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


class SharedTlsHttpSession(AIOHTTPSession):
    """aiobotocore's HTTP session, with the TLS contexts shared by every client of the process.

    aiobotocore builds a TLS context for each client it opens, loading the CA bundle each time, and collectors open
    a client per scan and region: opening one took 33 ms of CPU and 1.2 MB, 9 ms and 0.36 MB with the context shared
    (measured, 100 clients). A configured
    `ssl.SSLContext` is safe to share between connections, so one is built per set of TLS settings (verify, client
    certificate, proxy) and reused. A CA bundle changed on disk is read again when the process restarts.
    `_build_ssl_contexts` is aiobotocore's (3.x) hook for building them; tests/shared/test_aws.py checks that two
    clients get the same context, so an aiobotocore release that renames it is noticed.
    """

    _contexts: ClassVar[dict[tuple[str, ...], Any]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()  # aiobotocore builds the contexts in a worker thread

    def _build_ssl_contexts(self, proxy_url: str | None) -> Any:
        own: Any = self  # aiobotocore's private attributes, not in its type stubs
        proxy_settings = sorted((str(k), repr(v)) for k, v in (own._proxy_config.settings or {}).items())
        key = (repr(own._verify), repr(own._cert_file), repr(own._key_file), repr(proxy_url), repr(proxy_settings))
        with self._lock:
            contexts = self._contexts.get(key)
            if contexts is None:
                build: Any = super()._build_ssl_contexts  # type: ignore[misc]
                contexts = self._contexts[key] = build(proxy_url)
            return contexts


class AwsClients:
    """Creates aiobotocore clients with Kushim's settings: explicit region, endpoint and bounded retries."""

    def __init__(self, settings: Settings, session: AioSession | None = None) -> None:
        self._settings = settings
        self._session = session or self._make_session(settings)
        self._config = AioConfig(
            retries={"mode": "standard", "total_max_attempts": 3},
            connect_timeout=10,
            read_timeout=30,
            max_pool_connections=max(10, settings.aws_concurrency * 2),
            user_agent_extra="kushim/0.1",
            http_session_cls=SharedTlsHttpSession,
        )

    @staticmethod
    def _make_session(settings: Settings) -> AioSession:
        session = get_session()
        if settings.aws_profile:
            session.set_config_variable("profile", settings.aws_profile)
        if settings.aws_access_key_id and settings.aws_secret_access_key:
            session.set_credentials(
                settings.aws_access_key_id.get_secret_value(),
                settings.aws_secret_access_key.get_secret_value(),
                settings.aws_session_token.get_secret_value() if settings.aws_session_token else None,
            )
        return session

    @property
    def session(self) -> AioSession:
        return self._session

    @property
    def default_region(self) -> str:
        return self._settings.aws_region

    @overload
    def client(
        self, service: Literal["iam"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[IAMClient]: ...
    @overload
    def client(
        self, service: Literal["s3"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[S3Client]: ...
    @overload
    def client(
        self, service: Literal["cloudtrail"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[CloudTrailClient]: ...
    @overload
    def client(
        self, service: Literal["sts"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[STSClient]: ...
    @overload
    def client(
        self, service: Literal["secretsmanager"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[SecretsManagerClient]: ...
    @overload
    def client(
        self, service: Literal["organizations"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[OrganizationsClient]: ...
    @overload
    def client(
        self, service: Literal["ec2"], region: str | None = ..., counter: ApiCallCounter | None = ...
    ) -> AbstractClientCM[Any]: ...
    def client(self, service: str, region: str | None = None, counter: ApiCallCounter | None = None) -> Any:
        return self._client(service, region or self._settings.aws_region, counter)

    @asynccontextmanager
    async def _client(self, service: str, region: str, counter: ApiCallCounter | None) -> AsyncIterator[Any]:
        create: Any = self._session.create_client  # typed per service by the public overloads above
        async with create(
            service, region_name=region, config=self._config, endpoint_url=self._settings.aws_endpoint_url
        ) as client:
            if counter is not None:
                client.meta.events.register("before-send.*.*", counter)
                if counter.on_result is not None:
                    client.meta.events.register("after-call.*.*", counter.result)
                    client.meta.events.register("after-call-error.*.*", counter.result)
            yield client

    async def resolve_credentials(self) -> None:
        """Obtain the session's credentials now (an assumed role, a secret): raises what their source raised."""
        credentials = await self._session.get_credentials()
        if credentials is None:
            raise NoCredentialsError()
        await credentials.get_frozen_credentials()

    async def enabled_regions(self, counter: ApiCallCounter | None = None) -> list[str]:
        """Regions enabled for the account (ec2:DescribeRegions without AllRegions: opted-in and default ones)."""
        async with self.client("ec2", None, counter) as ec2:
            answer = await ec2.describe_regions(AllRegions=False)
        return sorted(str(r["RegionName"]) for r in answer.get("Regions", []) if r.get("RegionName"))

    async def caller_account(self) -> str:
        """The account the credentials belong to (sts:GetCallerIdentity)."""
        async with self.client("sts") as sts:
            identity = await sts.get_caller_identity()
        return str(identity["Account"])
