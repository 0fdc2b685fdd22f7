"""Requests coalesced into a run in flight (RunJoined): the evidence service answers each with the run's
RunCompleted under its own request_id, whenever the RunJoined arrives (before the plan, while the run is in flight,
after it completed), once per state the run ends in. On a real nats-server, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from services.evidence.store import EvidenceStore
from shared import subjects
from shared.messages import FindingsReported, RunCompleted, RunJoined, RunState, Service, Status, run_id_for
from shared.nats import publish_durable
from shared.settings import Settings
from tests.evidence.factory import ACCOUNT, make_chunks, make_finding, make_plan, new_request_id
from tests.evidence.harness import Harness, running_evidence
from tests.helpers import eventually, stream_models


def joined(run_id: str, request_id: str, tenant: str | None = None) -> RunJoined:
    return RunJoined(
        run_id=run_id, request_id=request_id, tenant=tenant, requested_by="pytest", joined_at=datetime.now(UTC)
    )


async def join(h: Harness, message: RunJoined) -> None:
    await publish_durable(
        h.broker,
        subjects.RUNS_JOINED,
        message,
        msg_id=f"joined:{message.run_id}:{message.request_id}",
        stream=subjects.STREAM_RUNS,
    )


def iam_chunks(request_id: str) -> list[FindingsReported]:
    run_id = run_id_for(request_id)
    return make_chunks(
        request_id, ACCOUNT, Service.IAM, [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.FAIL)]
    )


async def completions(h: Harness, subject: str = subjects.RUNS_COMPLETED) -> list[RunCompleted]:
    return await stream_models(h.nc, subjects.STREAM_RUNS, subject, RunCompleted)


async def test_a_request_joining_a_completed_run_is_answered_at_once_and_only_once(
    e2e_settings: Callable[..., Settings], database_url: str
) -> None:
    """The run completed before its claim was released: a request joining it then gets the run's result at once."""
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    async with running_evidence(e2e_settings(database_url=database_url)) as h:
        await h.plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
        await h.chunks(iam_chunks(request_id))
        own = await h.next_completion()
        assert own.request_id == request_id

        await join(h, joined(run_id, "late-joiner"))
        answer = await h.next_completion()
        assert answer.request_id == "late-joiner"
        assert answer.model_dump(exclude={"request_id"}) == own.model_dump(exclude={"request_id"})

        # Redelivered (a new Nats-Msg-Id, so the stream keeps it) and swept: nothing more is published.
        await publish_durable(
            h.broker, subjects.RUNS_JOINED, joined(run_id, "late-joiner"), msg_id="again", stream=subjects.STREAM_RUNS
        )
        await asyncio.sleep(1.0)  # its consumer and a few deadline sweeps
        assert sorted(c.request_id for c in await completions(h)) == sorted([request_id, "late-joiner"])


async def test_joiners_before_the_plan_and_in_flight_are_answered_when_the_run_ends_in_each_state(
    e2e_settings: Callable[..., Settings], database_url: str
) -> None:
    """RunJoined may arrive before the run's RunPlanned (no order across subjects): it waits. A run that ends
    INCOMPLETE and later COMPLETE answers its joiners twice, like its own requester."""
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    deadline = datetime.now(UTC) + timedelta(seconds=2)
    plan = make_plan(request_id, [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)], deadline_at=deadline)
    s3_chunks = make_chunks(
        request_id,
        ACCOUNT,
        Service.S3,
        [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", "bucket/b", Status.PASS)],
    )
    store = EvidenceStore(database_url)
    async with running_evidence(e2e_settings(database_url=database_url), store=store) as h:
        await join(h, joined(run_id, "before-plan"))
        await h.plan(plan)
        await join(h, joined(run_id, "in-flight"))
        await h.chunks(iam_chunks(request_id))  # the S3 pair never arrives before the deadline

        async def answered(state: RunState, count: int) -> bool:
            return len([c for c in await completions(h) if c.state is state]) == count

        await eventually(lambda: answered(RunState.INCOMPLETE, 3), timeout=15, what="three INCOMPLETE answers")
        incomplete = [c for c in await completions(h) if c.state is RunState.INCOMPLETE]
        assert sorted(c.request_id for c in incomplete) == sorted([request_id, "before-plan", "in-flight"])
        assert {c.run_id for c in incomplete} == {run_id}
        assert all(c.missing == incomplete[0].missing != [] for c in incomplete)

        await h.chunks(s3_chunks)  # late results: the run becomes COMPLETE, and every requester hears it
        await eventually(lambda: answered(RunState.COMPLETE, 3), timeout=15, what="three COMPLETE answers")
        complete = [c for c in await completions(h) if c.state is RunState.COMPLETE]
        assert sorted(c.request_id for c in complete) == sorted([request_id, "before-plan", "in-flight"])
        assert await store.owed_joiners(run_id) == []
        assert await store.unpublished_runs() == []
        # A joiner's report request by its own request id finds the run it joined.
        found = await store.find_run(request_id="in-flight")
        assert found is not None
        assert found.run_id == run_id
    await store.close()


async def test_a_tenants_joiner_is_answered_on_the_tenants_subject(
    e2e_settings: Callable[..., Settings], database_url: str
) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)  # (the scheduler derives a tenant's run ids from tenant/request_id)
    plan = make_plan(request_id, [(ACCOUNT, Service.IAM)]).model_copy(update={"tenant": "acme"})
    chunks = iam_chunks(request_id)
    async with running_evidence(e2e_settings(database_url=database_url)) as h:
        await join(h, joined(run_id, "acme-joiner", tenant="acme"))
        await h.plan(plan)
        await h.chunks(chunks)

        async def both() -> bool:
            return len(await completions(h, "kushim.runs.completed.acme")) == 2

        await eventually(both, what="the run's and the joiner's RunCompleted on the tenant's subject")
        answers = await completions(h, "kushim.runs.completed.acme")
        assert sorted(c.request_id for c in answers) == sorted([request_id, "acme-joiner"])
        assert {c.tenant for c in answers} == {"acme"}
        assert await completions(h) == []  # nothing on the untenanted subject


async def test_store_records_joiners_once_and_knows_what_each_is_owed(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    await store.save_join(joined(run_id, "j1"))
    await store.save_join(joined(run_id, "j1"))  # a redelivery changes nothing
    assert await store.joined_state(run_id, "j1") == (True, None)
    assert await store.owed_joiners(run_id) == []  # the run is unknown yet
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)], deadline_at=datetime.now(UTC)))
    assert await store.owed_joiners(run_id) == []  # RUNNING: nothing owed yet
    state = await store.finalize_run(run_id, datetime.now(UTC), deadline_passed=True, gating={})
    assert state is RunState.INCOMPLETE
    assert await store.owed_joiners(run_id) == [("j1", None)]
    await store.mark_published(run_id, RunState.INCOMPLETE)
    assert await store.unpublished_runs() == [run_id]  # the joiner is still owed
    await store.mark_joiners_published(run_id, ["j1"], RunState.INCOMPLETE)
    assert await store.unpublished_runs() == []
    assert await store.owed_joiners(run_id) == []
    # A request joining the final run is answered first, then recorded as answered.
    await store.save_join(joined(run_id, "j2"), published=RunState.INCOMPLETE)
    assert await store.joined_state(run_id, "j2") == (True, RunState.INCOMPLETE)
    assert await store.owed_joiners(run_id) == []
    found = await store.find_run(request_id="j1")
    assert found is not None
    assert found.run_id == run_id
