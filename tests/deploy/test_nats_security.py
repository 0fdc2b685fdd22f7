"""The shipped nats-server configuration (deploy/nats/nats-server.conf) on a real nats-server: every service works
under its own user, and the `external` user can request runs and reports and hear outcomes, and nothing else."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from services.cli.client import run_check
from services.cli.demo_account import seed_demo_account
from services.cli.stack import SERVICES, migrate_database
from services.evidence.store import EvidenceStore
from services.scheduler.cron import CronLoop, slot_request_id
from shared import subjects
from shared.accounts import Account, AssumeRoleAccess, Registry, Tenant
from shared.aws import AwsClients
from shared.embedded import EmbeddedNats, start_nats
from shared.messages import FindingsReported, RunState, Service, Status
from shared.nats import declare_topology, make_broker
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT
from tests.evidence.factory import make_chunks, make_finding, new_request_id
from tests.helpers import stream_payloads, until

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "nats" / "nats-server.conf"
USERS = ("scheduler", "collector", "evidence", "operator", "external", "partner", "admin")
USER_OF_SERVICE = {
    "scheduler": "scheduler",
    "collector-iam": "collector",
    "collector-s3": "collector",
    "collector-cloudtrail": "collector",
    "evidence": "evidence",
}
EVIDENCE_BUCKET = "kushim-evidence-storage-demo"


@dataclass(frozen=True)
class SecuredNats:
    server: EmbeddedNats
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return f"nats://{user}:{self.passwords[user]}@127.0.0.1:{self.server.port}"


@pytest.fixture
def secured_nats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SecuredNats]:
    passwords = {user: f"pw{secrets.token_hex(16)}" for user in USERS}  # env values are typed: keep them words
    for user, password in passwords.items():
        monkeypatch.setenv(f"KUSHIM_NATS_{user.upper()}_PASSWORD", password)
    server = start_nats(tmp_path / "secured-nats", config=CONFIG)
    try:
        yield SecuredNats(server, passwords)
    finally:
        server.stop()


class Violations:
    """nats-py reports permission violations asynchronously at the error callback, never from publish()."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.errors.append(str(exc))


async def _connect(url: str, violations: Violations | None = None, **options: Any) -> NatsClient:
    callback = violations or Violations()
    return await nats.connect(url, error_cb=callback.record, max_reconnect_attempts=0, **options)


async def _stream_counts(nc: NatsClient) -> dict[str, int]:
    js = nc.jetstream()
    counts = {}
    for stream in (subjects.STREAM_RUNS, subjects.STREAM_CHECKS, subjects.STREAM_FINDINGS, subjects.STREAM_DLQ):
        counts[stream] = int((await js.stream_info(stream)).state.messages)
    return counts


async def _evidence_rows(settings: Settings) -> int:
    store = EvidenceStore(settings.effective_database_url)
    try:
        rows = await store.list_runs(limit=200)
        return sum(r.findings_total for r in rows)
    finally:
        await store.close()


@pytest.fixture
async def secured_stack(
    secured_nats: SecuredNats, make_settings: Callable[..., Settings], moto_endpoint: str
) -> AsyncIterator[Settings]:
    """Every service started with its own user of the shipped configuration."""
    seed_demo_account(moto_endpoint)
    settings = make_settings(
        nats_url=secured_nats.url("operator"), aws_endpoint_url=moto_endpoint, evidence_bucket=EVIDENCE_BUCKET
    )
    await migrate_database(settings)
    aws = AwsClients(settings)
    # The administrator creates the topology once; the services, whose users may not, only check it.
    admin = await _connect(secured_nats.url("admin"))
    try:
        await declare_topology(admin.jetstream(), settings)
    finally:
        await admin.close()
    locked = settings.model_copy(update={"declare_topology": False})
    async with AsyncExitStack() as stack:
        for name, factory in SERVICES.items():
            app = factory(locked, url=secured_nats.url(USER_OF_SERVICE[name]), aws=aws)
            await app.start()
            stack.push_async_callback(app.stop)
        yield settings


@pytest.mark.timeout(90)
async def test_services_run_under_their_own_users_and_outsiders_can_only_request(
    secured_nats: SecuredNats, secured_stack: Settings
) -> None:
    settings = secured_stack
    # The operator's CLI path: request, wait, read the report.
    report = await run_check(secured_nats.url("operator"), timeout=60, request_id="secured-operator")
    assert report.run.state is RunState.COMPLETE
    assert {s.service for s in report.services} == set(Service)

    # Another system, as `external`: a run request and its RunCompleted, a report through its own inbox prefix.
    violations = Violations()
    outsider = await _connect(secured_nats.url("external"), violations, inbox_prefix="_INBOX_external")
    try:
        request_id = new_request_id()
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        async def on_completed(msg: Any) -> None:
            body = json.loads(msg.data)
            if body.get("request_id") == request_id and not done.done():
                done.set_result(body)

        await outsider.subscribe(subjects.RUNS_COMPLETED, cb=on_completed)
        request = {
            "request_id": request_id,
            "services": ["iam"],
            "requested_by": "another-system",
            "requested_at": datetime.now(UTC).isoformat(),
        }
        ack = await outsider.jetstream().publish(
            subjects.RUNS_REQUESTED,
            json.dumps(request).encode(),
            stream=subjects.STREAM_RUNS,
            headers={"Nats-Msg-Id": request_id},
        )
        assert ack.stream == subjects.STREAM_RUNS
        completed = await asyncio.wait_for(done, 60)
        assert completed["state"] == "COMPLETE"
        reply = await outsider.request(
            subjects.REPORT_REQUEST, json.dumps({"request_id": request_id}).encode(), timeout=10
        )
        assert json.loads(reply.data)["ok"] is True

        # Everything else is refused, and refused silently at publish(): assert on what the streams and the
        # database hold, before and after.
        async with AsyncExitStack() as cleanup:
            evidence_nc = await _connect(secured_nats.url("evidence"))
            cleanup.push_async_callback(evidence_nc.close)
            before = await _stream_counts(evidence_nc)
            rows_before = await _evidence_rows(settings)
            run_id = report.run.run_id
            forged = make_chunks(
                new_request_id(),
                MOTO_ACCOUNT,
                Service.IAM,
                [make_finding(run_id, MOTO_ACCOUNT, "iam.user_mfa", f"user/forged{i}", Status.PASS) for i in range(5)],
            )[0]
            payload = forged.model_dump_json().encode()
            for i in range(1000):
                await outsider.publish(
                    subjects.findings_subject(Service.IAM), payload, headers={"Nats-Msg-Id": f"f{i}"}
                )
            check = {"run_id": run_id, "request_id": "forged", "account_id": MOTO_ACCOUNT, "service": "iam"}
            for _ in range(100):
                await outsider.publish(subjects.checks_subject(Service.IAM), json.dumps(check).encode())
            for api in (
                f"$JS.API.STREAM.PURGE.{subjects.STREAM_FINDINGS}",
                f"$JS.API.STREAM.DELETE.{subjects.STREAM_RUNS}",
                f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_FINDINGS}.{subjects.DURABLE_EVIDENCE_FINDINGS}",
            ):
                await outsider.publish(api, b"", reply="_INBOX_external.purge")
            await outsider.publish("kushim.runs.completed", b'{"forged": true}')
            await outsider.subscribe("kushim.findings.>")
            await outsider.subscribe("_INBOX.>")
            await outsider.flush()
            await asyncio.sleep(1.0)  # give the services time to (not) act on anything
            assert await _stream_counts(evidence_nc) == before
            assert await _evidence_rows(settings) == rows_before
        assert len(violations.errors) >= 5
        assert all("permissions violation" in e.lower() for e in violations.errors)
    finally:
        await outsider.close()
    # The services did all of this within their own, narrower permissions: the server logged no violation by them.
    assert _violations_by(secured_nats, "scheduler", "collector", "evidence", "operator") == []


def _violations_by(secured: SecuredNats, *users: str) -> list[str]:
    lines = secured.server.log_file.read_text(errors="replace").splitlines()
    return [line for line in lines if "Violation" in line and any(f'user:{u}"' in line for u in users)]


async def test_services_cannot_purge_or_delete_streams(secured_nats: SecuredNats, secured_stack: Settings) -> None:
    """A service's user may not purge, delete, update or create a stream or a consumer, nor fetch from another
    service's consumer; the findings stream itself also refuses purges."""
    for user in ("collector", "evidence", "scheduler"):
        violations = Violations()
        nc = await _connect(secured_nats.url(user), violations)
        try:
            before = await _stream_counts(nc)
            findings = await nc.jetstream().stream_info(subjects.STREAM_FINDINGS)
            shrunk = findings.config.as_dict() | {"max_msgs": 1}
            own = "scheduler-run-requests" if user == "scheduler" else subjects.collector_durable(Service.IAM)
            for api, body in (
                (f"$JS.API.STREAM.PURGE.{subjects.STREAM_FINDINGS}", b""),
                (f"$JS.API.STREAM.DELETE.{subjects.STREAM_FINDINGS}", b""),
                (f"$JS.API.CONSUMER.DELETE.{subjects.STREAM_CHECKS}.{subjects.collector_durable(Service.IAM)}", b""),
                # A limit change would purge as surely as a purge: only the administrator may update a stream.
                (f"$JS.API.STREAM.UPDATE.{subjects.STREAM_FINDINGS}", json.dumps(shrunk).encode()),
                (f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_FINDINGS}", b"{}"),
                (f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM_FINDINGS}.{subjects.DURABLE_EVIDENCE_FINDINGS}", b""),
                (f"$JS.API.STREAM.CREATE.KV_{user}", b"{}"),
            ):
                if user == "evidence" and "MSG.NEXT" in api:
                    continue  # its own consumer
                await nc.publish(api, body, reply=f"_INBOX.{own}")
            await nc.flush()
            await asyncio.sleep(0.3)
            assert await _stream_counts(nc) == before
            info = await nc.jetstream().consumer_info(subjects.STREAM_CHECKS, subjects.collector_durable(Service.IAM))
            assert info.name == subjects.collector_durable(Service.IAM)
            after = await nc.jetstream().stream_info(subjects.STREAM_FINDINGS)
            assert after.config.max_msgs == findings.config.max_msgs
            expected = 6 if user == "evidence" else 7
            assert len(violations.errors) == expected, violations.errors
        finally:
            await nc.close()


def test_off_loopback_broker_without_credentials_is_refused() -> None:
    with pytest.raises(ValidationError, match="not on this machine and the URL carries no credentials"):
        Settings(nats_url="nats://nats.kushim.svc:4222")
    assert Settings(nats_url="nats://evidence:secret@nats.kushim.svc:4222").nats_url
    assert Settings(nats_url="nats://127.0.0.1:4222").nats_url


def test_forged_chunk_is_a_valid_message() -> None:
    """The forgeries above are well-formed FindingsReported: only the permissions stop them."""
    chunk = make_chunks("x-1", MOTO_ACCOUNT, Service.IAM, [])[0]
    assert FindingsReported.model_validate_json(chunk.model_dump_json()) == chunk


async def test_the_scheduler_user_claims_and_publishes_schedule_slots(
    secured_nats: SecuredNats, secured_stack: Settings
) -> None:
    broker = make_broker(secured_nats.url("scheduler"), name="scheduler-cron", settings=secured_stack)
    await broker.connect()
    try:
        loop = CronLoop(broker=broker, expression="0 2 * * *")
        slot = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
        assert await loop.publish_slot(slot) is True
        assert await loop.publish_slot(slot) is False
    finally:
        await broker.stop()
    # The external user cannot touch the claims.
    violations = Violations()
    outsider = await _connect(secured_nats.url("external"), violations, inbox_prefix="_INBOX_external")
    try:
        await outsider.publish("$KV.KUSHIM_SCHEDULE.slot.20261128T0200Z", b"{}")
        await outsider.flush()
        await asyncio.sleep(0.3)
        assert len(violations.errors) == 1
    finally:
        await outsider.close()


async def _kushim_request(nc: NatsClient, subject: str, request_id: str, **fields: Any) -> None:
    request = {"request_id": request_id, "requested_at": datetime.now(UTC).isoformat(), **fields}
    await nc.publish(subject, json.dumps(request).encode(), headers={"Nats-Msg-Id": request_id})


@pytest.mark.timeout(90)
async def test_a_tenant_can_request_only_accounts_on_its_allow_list(
    secured_nats: SecuredNats, secured_stack: Settings
) -> None:
    """The tenant `partner` (its own user and subject) may scan only its allow-listed account, hears only its own
    outcomes, and cannot pose as another tenant or as an untenanted requester."""
    other = "111111111111"
    write_registry(secured_stack.registry_path, tenant_accounts=[MOTO_ACCOUNT], other=other)
    violations = Violations()
    partner = await _connect(secured_nats.url("partner"), violations, inbox_prefix="_INBOX_partner")
    evidence_nc = await _connect(secured_nats.url("evidence"))
    try:
        outcomes: dict[str, dict[str, Any]] = {}
        arrived = asyncio.Event()

        async def on_outcome(msg: Any) -> None:
            outcomes[msg.subject + " " + str(json.loads(msg.data).get("request_id"))] = json.loads(msg.data)
            arrived.set()

        await partner.subscribe("kushim.runs.completed.partner", cb=on_outcome)
        await partner.subscribe("kushim.runs.rejected.partner", cb=on_outcome)
        await partner.flush()
        before = await _stream_counts(evidence_nc)

        # An account outside the allow-list: rejected before any scan, answered on the tenant's subject.
        await _kushim_request(partner, "kushim.runs.requested.partner", "p-outside", accounts=[other])
        await until(lambda: "kushim.runs.rejected.partner p-outside" in outcomes, timeout=30)
        reason = outcomes["kushim.runs.rejected.partner p-outside"]["reason"]
        assert f"{other} are not on tenant partner's allow-list" in reason
        assert MOTO_ACCOUNT not in reason  # a tenant learns nothing about other registered accounts
        after = await _stream_counts(evidence_nc)
        assert after[subjects.STREAM_CHECKS] == before[subjects.STREAM_CHECKS]

        # Posing as the operator's subject or as another tenant is refused by the server itself.
        await _kushim_request(partner, subjects.RUNS_REQUESTED, "p-untenanted", accounts=[other])
        await _kushim_request(partner, "kushim.runs.requested.billing", "p-other-tenant", accounts=[other])
        await partner.subscribe(subjects.RUNS_COMPLETED)
        await partner.subscribe("kushim.runs.completed.billing")
        await partner.flush()
        await asyncio.sleep(0.5)
        assert len(violations.errors) == 4, violations.errors
        assert (await _stream_counts(evidence_nc))[subjects.STREAM_CHECKS] == before[subjects.STREAM_CHECKS]

        # Its allow-listed account: scanned, and the outcome arrives on the tenant's own subject.
        await _kushim_request(partner, "kushim.runs.requested.partner", "p-allowed", services=["iam"])
        await until(lambda: "kushim.runs.completed.partner p-allowed" in outcomes, timeout=60)
        completed = outcomes["kushim.runs.completed.partner p-allowed"]
        assert completed["state"] == "COMPLETE"
        assert completed["tenant"] == "partner"
        checks = (await _stream_counts(evidence_nc))[subjects.STREAM_CHECKS] - before[subjects.STREAM_CHECKS]
        assert checks == 1  # one account (the allow-list), one service

        # Message ids are de-duplicated per stream: a tenant choosing the id of a scheduled slot's request (or of a
        # plan) lands in its own stream and cannot suppress Kushim's message.
        slot = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
        await _kushim_request(partner, "kushim.runs.requested.partner", slot_request_id(slot), accounts=[other])
        await partner.flush()
        broker = make_broker(secured_nats.url("scheduler"), name="scheduler-cron", settings=secured_stack)
        await broker.connect()
        try:
            assert await CronLoop(broker=broker, expression="0 2 * * *").publish_slot(slot) is True
        finally:
            await broker.stop()
        admin = await _connect(secured_nats.url("admin"))  # reading a stream needs a consumer: only admin may
        try:
            scheduled = await stream_payloads(admin, subjects.STREAM_RUNS, subjects.RUNS_REQUESTED)
        finally:
            await admin.close()
        assert [json.loads(p)["request_id"] for p in scheduled][-1] == slot_request_id(slot)
    finally:
        await partner.close()
        await evidence_nc.close()


def write_registry(path: Path, *, tenant_accounts: list[str], other: str) -> None:
    """Two registered accounts (moto's, reached with the default credentials, and another by AssumeRole); the
    tenant `partner` may scan only `tenant_accounts`. Services re-read the file: no restart needed."""
    registry = Registry(
        accounts=[
            Account(id=MOTO_ACCOUNT, name="hub"),
            Account(
                id=other,
                name="other",
                access=AssumeRoleAccess(
                    kind="assume_role", role_arn=f"arn:aws:iam::{other}:role/KushimAudit", external_id="kushim-test-id"
                ),
            ),
        ],
        tenants=[Tenant(name="partner", accounts=tenant_accounts)],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["schema_version = 1"]
    for account in registry.accounts:
        lines += ["[[accounts]]", f'id = "{account.id}"', f'name = "{account.name}"']
        if isinstance(account.access, AssumeRoleAccess):
            lines.append(
                f'access = {{ kind = "assume_role", role_arn = "{account.access.role_arn}", '
                f'external_id = "{account.access.external_id}" }}'
            )
    for tenant in registry.tenants:
        lines += ["[[tenants]]", f'name = "{tenant.name}"', f"accounts = {json.dumps(tenant.accounts)}"]
    path.write_text("\n".join(lines) + "\n")
