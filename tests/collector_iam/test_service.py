"""The IAM collector service end to end: a real nats-server, moto, CheckRequested in, FindingsReported out."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import nats
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError

from services.collector_iam.app import create_service
from shared import subjects
from shared.embedded import EmbeddedNats
from shared.messages import CheckRequested, DeadLetter, FindingsReported, Service, Status
from shared.nats import make_broker, publish_durable
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client

OTHER_ACCOUNT = "999999999999"


@asynccontextmanager
async def running_collector(settings: Settings) -> AsyncIterator[None]:
    assert settings.nats_url is not None
    app = create_service(settings, url=settings.nats_url)
    await app.start()
    try:
        yield
    finally:
        await app.stop()


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


async def request_check(settings: Settings, run_hex: str, account_id: str = MOTO_ACCOUNT) -> CheckRequested:
    assert settings.nats_url is not None
    msg = CheckRequested(
        run_id="run-" + run_hex * 32,
        request_id=f"req-{run_hex}",
        account_id=account_id,
        service=Service.IAM,
        regions=["us-east-1"],
        requested_at=datetime.now(UTC),
    )
    broker = make_broker(settings.nats_url, name="test-publisher", settings=settings)
    await broker.connect()
    try:
        await publish_durable(
            broker,
            subjects.checks_subject(Service.IAM),
            msg,
            msg_id=f"check:{msg.run_id}:{account_id}:iam",
            stream=subjects.STREAM_CHECKS,
        )
    finally:
        await broker.stop()
    return msg


async def stored(nc: NatsClient, stream: str) -> list[tuple[str, bytes]]:
    """(subject, payload) of every message in a stream."""
    js = nc.jetstream()
    info = await js.stream_info(stream)
    out: list[tuple[str, bytes]] = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        assert msg.subject is not None
        assert msg.data is not None
        out.append((msg.subject, msg.data))
    return out


async def wait_for_chunks(nc: NatsClient, run_id: str, timeout: float = 30.0) -> list[tuple[FindingsReported, int]]:
    """Every chunk of one run (with its payload size), once the last of them is in the stream."""
    deadline = time.monotonic() + timeout
    while True:
        chunks = [
            (FindingsReported.model_validate_json(data), len(data))
            for subject, data in await stored(nc, subjects.STREAM_FINDINGS)
            if subject == subjects.findings_subject(Service.IAM)
        ]
        mine = [(c, n) for c, n in chunks if c.run_id == run_id]
        if mine and len(mine) >= mine[0][0].chunk_count:
            return mine
        assert time.monotonic() < deadline, f"run {run_id}: {len(mine)} chunk(s) after {timeout}s"
        await asyncio.sleep(0.2)


def seed_users(endpoint: str, count: int) -> None:
    """user-000 ... : every 3rd has a console password, every 5th an MFA device."""
    iam = boto3_client(endpoint, "iam")
    for i in range(count):
        name = f"user-{i:03d}"
        iam.create_user(UserName=name)
        if i % 3 == 0:
            iam.create_login_profile(UserName=name, Password="Not-a-real-pw-1!")
        if i % 5 == 0:
            serial = iam.create_virtual_mfa_device(VirtualMFADeviceName=f"mfa-{name}")["VirtualMFADevice"]
            iam.enable_mfa_device(
                UserName=name,
                SerialNumber=serial["SerialNumber"],
                AuthenticationCode1="123456",
                AuthenticationCode2="654321",
            )
    iam.create_virtual_mfa_device(VirtualMFADeviceName="never-assigned")


async def test_findings_arrive_in_numbered_chunks_without_loss_or_duplicates(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    seed_users(moto_endpoint, 150)
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, chunk_max_bytes=16384)

    async with running_collector(settings), nats_client(nats_server.url) as nc:
        request = await request_check(settings, "a")
        chunks = await wait_for_chunks(nc, request.run_id)

    # Truth, independent of the collector: 150 users, 50 with a console password (i % 3 == 0), 30 with MFA
    # (i % 5 == 0), 10 of them console users (i % 15 == 0).
    count = chunks[0][0].chunk_count
    assert count > 1, count
    assert sorted(c.chunk_index for c, _ in chunks) == list(range(count))
    assert {c.chunk_count for c, _ in chunks} == {count}
    assert all(size <= 16384 for _, size in chunks)
    findings = [f for c, _ in chunks for f in c.findings]
    assert len(findings) == 202
    assert len({f.finding_id for f in findings}) == 202
    assert {(f.check_id, f.resource_id) for f in findings if f.check_id == "iam.user_mfa"} == {
        ("iam.user_mfa", f"user/user-{i:03d}") for i in range(150)
    }
    tally: dict[tuple[str, Status], int] = {}
    for f in findings:
        tally[(f.check_id, f.status)] = tally.get((f.check_id, f.status), 0) + 1
    assert tally == {
        ("iam.user_mfa", Status.PASS): 30,
        ("iam.user_mfa", Status.FAIL): 120,
        ("iam.console_user_mfa", Status.PASS): 10,
        ("iam.console_user_mfa", Status.FAIL): 40,
        # moto's root: no MFA (AccountMFAEnabled is always 0), no access keys
        ("iam.root_mfa", Status.FAIL): 1,
        ("iam.root_access_keys", Status.PASS): 1,
    }
    assert {f.account_id for f in findings} == {MOTO_ACCOUNT}
    first = chunks[0][0]
    assert first.population == {"users": 150, "console_users": 50, "active_access_keys": 0}
    assert first.metrics == {"root_mfa": 0.0, "mfa_percent": 20.0, "console_mfa_percent": 20.0}
    assert first.regions == ["global"]
    # The credential report answers for all 150 users: no per-user calls.
    assert first.api_calls == {
        "iam:GenerateCredentialReport": 2,
        "iam:GetAccountSummary": 1,
        "iam:GetCredentialReport": 1,
    }
    assert {f.details["source"] for f in findings if f.resource_id.startswith("user/")} == {"credential_report"}


async def test_account_without_users_sends_one_chunk_with_only_the_root_findings(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint)

    async with running_collector(settings), nats_client(nats_server.url) as nc:
        request = await request_check(settings, "b")
        chunks = await wait_for_chunks(nc, request.run_id)
        await asyncio.sleep(0.5)  # nothing else may follow
        everything = await stored(nc, subjects.STREAM_FINDINGS)

    assert len(chunks) == 1
    ((chunk, _),) = chunks
    assert (chunk.chunk_index, chunk.chunk_count) == (0, 1)
    # The root user is always there; no IAM user is.
    assert {(f.check_id, f.resource_id, f.status) for f in chunk.findings} == {
        ("iam.root_mfa", "root", Status.FAIL),
        ("iam.root_access_keys", "root", Status.PASS),
    }
    assert chunk.population == {"users": 0, "console_users": 0, "active_access_keys": 0}
    assert chunk.metrics == {"root_mfa": 0.0}
    assert len(everything) == 1


async def test_request_for_another_account_is_dead_lettered_without_findings(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    boto3_client(moto_endpoint, "iam").create_user(UserName="alice")
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint)

    async with running_collector(settings), nats_client(nats_server.url) as nc:
        foreign = await request_check(settings, "c", account_id=OTHER_ACCOUNT)
        # A later valid request: once its findings are in, the foreign one (delivered first) has been handled.
        own = await request_check(settings, "d")
        await wait_for_chunks(nc, own.run_id)
        letters = await stored(nc, subjects.STREAM_DLQ)
        findings = [FindingsReported.model_validate_json(d) for _, d in await stored(nc, subjects.STREAM_FINDINGS)]

    assert [subject for subject, _ in letters] == ["kushim.dlq.collector-iam"]
    letter = DeadLetter.model_validate_json(letters[0][1])
    assert letter.consumer == "collector-iam"
    assert letter.subject == "kushim.checks.iam"
    assert OTHER_ACCOUNT in letter.reason
    assert MOTO_ACCOUNT in letter.reason  # the guard resolved the credentials' (moto's) account
    assert foreign.run_id in letter.payload_excerpt
    assert {c.run_id for c in findings} == {own.run_id}
    assert all(f.account_id == MOTO_ACCOUNT for c in findings for f in c.findings)
