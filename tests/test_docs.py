"""Everything a user can set, send or run is documented in the README."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from shared import messages, subjects
from shared.controls import CATALOG
from shared.messages import Service
from shared.settings import setting_env_names

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def env_vars() -> list[str]:
    return [variable for variables in setting_env_names().values() for variable in variables]


@pytest.mark.parametrize("variable", env_vars())
def test_every_setting_is_in_the_readme(variable: str) -> None:
    assert f"`{variable}" in README or f"{variable}`" in README or f" {variable}," in README


def all_subjects() -> list[str]:
    values = [
        subjects.RUNS_REQUESTED,
        subjects.RUNS_PLANNED,
        subjects.RUNS_COMPLETED,
        subjects.RUNS_REJECTED,
        subjects.RUNS_JOINED,
        subjects.DURABLE_EVIDENCE_JOINS,
        subjects.DURABLE_SCHEDULER_COMPLETIONS,
        subjects.DURABLE_SCHEDULER_TENANT_COMPLETIONS,
        subjects.REPORT_REQUEST,
        subjects.CONNECTION_TEST,
        subjects.RUNS_REQUEST,
        subjects.HISTORY_REQUEST,
        subjects.DURABLE_EVIDENCE_DEAD_LETTERS,
        subjects.STREAM_RUNS,
        subjects.STREAM_CHECKS,
        subjects.STREAM_FINDINGS,
        subjects.STREAM_DLQ,
        subjects.STREAM_ADVISORIES,
        subjects.DURABLE_SCHEDULER,
        subjects.DURABLE_EVIDENCE_PLANS,
        subjects.DURABLE_EVIDENCE_FINDINGS,
    ]
    for service in Service:
        values += [subjects.checks_subject(service), subjects.findings_subject(service)]
        values.append(subjects.collector_durable(service))
    return values


@pytest.mark.parametrize("subject", all_subjects())
def test_every_subject_stream_and_consumer_is_in_the_readme(subject: str) -> None:
    assert subject in README


MESSAGES: list[type[BaseModel]] = [
    messages.RunRequested,
    messages.RunPlanned,
    messages.CheckRequested,
    messages.FindingsReported,
    messages.Finding,
    messages.RunCompleted,
    messages.RunRejected,
    messages.RunJoined,
    messages.DeadLetter,
    messages.ReportRequest,
    messages.ReportPage,
    messages.ConnectionTestRequest,
    messages.ConnectionTestResult,
    messages.ServiceConnection,
    messages.RunsRequest,
    messages.RunsPage,
    messages.RunListEntry,
    messages.HistoryRequest,
    messages.HistoryPage,
    messages.HistoryEntry,
    messages.ResourceChange,
]


@pytest.mark.parametrize("model", MESSAGES, ids=lambda m: m.__name__)
def test_every_message_field_is_in_the_readme(model: type[BaseModel]) -> None:
    assert f"**{model.__name__}**" in README
    missing = [name for name in model.model_fields if f"`{name}`" not in README]
    assert missing == []


@pytest.mark.parametrize("check_id", [info.id for info in CATALOG])
def test_every_check_is_in_the_readme(check_id: str) -> None:
    assert f"`{check_id}`" in README


@pytest.mark.parametrize(
    "command",
    [
        "demo",
        "up",
        "check",
        "report",
        "runs",
        "history",
        "export",
        "evidence verify",
        "db upgrade",
        "db status",
        "serve",
        "connect",
        "controls",
        "policy",
        "settings",
    ],
)
def test_every_command_is_in_the_readme(command: str) -> None:
    assert f"`kushim {command}" in README


def test_quick_start_is_two_commands() -> None:
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    block = quick.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
