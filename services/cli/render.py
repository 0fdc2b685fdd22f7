"""The compliance report, for people (rich tables) and machines (JSON), and the CLI's exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from services.cli.client import Report
from shared.controls import CONTROL_SERVICES, CONTROL_TITLES, gating_table
from shared.messages import Finding, RunState, Service, Soc2Control, Status

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_USAGE = 2
EXIT_ERROR = 3
EXIT_COULD_NOT_RUN = 4

_STATUS_STYLE = {Status.PASS: "green", Status.FAIL: "bold red", Status.ERROR: "yellow"}
_STATUS_ORDER = {Status.FAIL: 0, Status.ERROR: 1, Status.PASS: 2}


def exit_code(report: Report) -> int:
    """0 every control passes; 1 any FAIL; 3 an ERROR or an INCOMPLETE run without FAIL."""
    statuses = {v.status for v in report.run.controls.values()}
    if Status.FAIL in statuses:
        return EXIT_FAIL
    if Status.ERROR in statuses or report.run.state is not RunState.COMPLETE:
        return EXIT_ERROR
    return EXIT_OK


def _finding_json(f: Finding) -> dict[str, Any]:
    return {
        "finding_id": f.finding_id,
        "account_id": f.account_id,
        "region": f.region,
        "control": f.control.value,
        "check_id": f.check_id,
        "resource_type": f.resource_type,
        "resource_arn": f.resource_arn,
        "resource_id": f.resource_id,
        "status": f.status.value,
        "severity": f.severity.value,
        "summary": f.summary,
        "details": f.details,
        "remediation": f.remediation,
    }


def report_json(report: Report) -> dict[str, Any]:
    run = report.run
    return {
        "run_id": run.run_id,
        "request_id": run.request_id,
        "status": run.state.value,
        "requested_at": run.requested_at.isoformat(),
        "completed_at": run.completed_at.isoformat() if run.completed_at else None,
        "controls": {
            control.value: {
                "status": verdict.status.value,
                "reason": verdict.reason,
                "failed": verdict.failed,
                "errors": verdict.errors,
                "passed": verdict.passed,
            }
            for control, verdict in sorted(run.controls.items())
        },
        "missing": [{"account_id": m.account_id, "service": m.service.value} for m in run.missing],
        "services": [
            {
                "account_id": s.account_id,
                "service": s.service.value,
                "complete": s.complete,
                "population": s.population,
                "metrics": s.metrics,
                "api_calls": s.api_calls,
                "evidence": s.evidence_location,
                "evidence_sha256": s.evidence_sha256,
            }
            for s in report.services
        ],
        "account_names": report.account_names,
        "findings": [_finding_json(f) for f in sorted_findings(report.findings)],
    }


def print_json(report: Report, console: Console) -> None:
    console.print_json(json.dumps(report_json(report)))


def sorted_findings(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (_STATUS_ORDER[f.status], f.account_id, f.check_id, f.resource_id))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f} %"


def print_report(report: Report, console: Console, gating: Mapping[str, bool] | None = None) -> None:
    """The report for people. `gating` says which checks gate their control (default: the catalogue's)."""
    gating = gating if gating is not None else gating_table()
    run = report.run
    console.print(f"[bold]Kushim compliance report[/bold]  run {run.run_id}  [bold]{run.state.value}[/bold]")
    console.print(f"requested {run.requested_at:%Y-%m-%d %H:%M:%S %Z} by {run.requested_by} (request {run.request_id})")
    accounts = sorted({s.account_id for s in report.services})
    named = [f"{a} ({report.account_names[a]})" if a in report.account_names else a for a in accounts]
    console.print(f"account(s): {', '.join(named) or '-'}")
    if run.missing:
        missing = ", ".join(f"{m.account_id}/{m.service.value}" for m in run.missing)
        console.print(f"[yellow]INCOMPLETE: no results from {missing}[/yellow]")

    table = Table(title="Controls", show_lines=False)
    table.add_column("Control")
    table.add_column("Verdict")
    table.add_column("What it covers")
    table.add_column("Why")
    for control, verdict in sorted(run.controls.items()):
        style = _STATUS_STYLE[verdict.status]
        table.add_row(
            control.value, f"[{style}]{verdict.status.value}[/{style}]", CONTROL_TITLES[control], verdict.reason
        )
    console.print(table)

    by_control: dict[Soc2Control, list[Finding]] = {}
    for f in report.findings:
        by_control.setdefault(f.control, []).append(f)
    for control in sorted(run.controls):
        service = CONTROL_SERVICES[control]
        console.print(f"\n[bold]{control.value}[/bold] {CONTROL_TITLES[control]}")
        for line in _service_lines(report, service):
            console.print(f"  {line}")
        findings = by_control.get(control, [])
        _print_findings(console, control, findings, gating)

    errors = [f for f in report.findings if f.status is Status.ERROR]
    if errors:
        console.print("\n[bold yellow]Could not be evaluated (ERROR)[/bold yellow]")
        for f in sorted_findings(errors):
            perm = f.details.get("required_permission")
            hint = f"  [dim](needs {perm})[/dim]" if perm and perm != "-" else ""
            console.print(f"  {f.check_id}  {f.resource_id}: {f.summary}{hint}")

    console.print("\n[bold]Evidence[/bold]")
    for s in sorted(report.services, key=lambda s: (s.account_id, s.service.value)):
        where = s.evidence_location or "(not stored yet)"
        digest = f"  sha256 {s.evidence_sha256[:16]}…" if s.evidence_sha256 else ""
        console.print(f"  {s.account_id} {s.service.value:<10} {where}{digest}")


def _service_lines(report: Report, service: Service) -> list[str]:
    lines: list[str] = []
    for s in report.services:
        if s.service is not service:
            continue
        prefix = f"{s.account_id}: " if len({x.account_id for x in report.services}) > 1 else ""
        pop, met = s.population, s.metrics
        if service is Service.IAM and "users" in pop:
            lines.append(
                f"{prefix}MFA: {_pct(met.get('mfa_percent'))} of {pop['users']} users "
                f"(console users: {_pct(met.get('console_mfa_percent'))} of {pop.get('console_users', 0)})"
            )
        elif service is Service.S3 and "buckets" in pop:
            lines.append(
                f"{prefix}{pop['buckets']} buckets: {_pct(met.get('encrypted_percent'))} encrypted by default, "
                f"{_pct(met.get('kms_percent'))} with KMS, {_pct(met.get('versioning_percent'))} versioned, "
                f"{_pct(met.get('logging_percent'))} logged, "
                f"{_pct(met.get('public_access_blocked_percent'))} blocking public access"
            )
        elif service is Service.CLOUDTRAIL and "trails" in pop:
            lines.append(
                f"{prefix}{pop['trails']} trails, {int(met.get('logging_trails', 0))} logging; "
                f"{pop.get('regions', 0)} region(s) inspected"
            )
    return lines


MAX_LISTED = 10
MFA_CHECKS = ("iam.user_mfa", "iam.console_user_mfa")


def _print_findings(
    console: Console, control: Soc2Control, findings: list[Finding], gating: Mapping[str, bool]
) -> None:
    """Per check (gating first): a count line, the failing resources (at most MAX_LISTED), and the fix."""
    if control is Soc2Control.CC6_1:
        _print_users_without_mfa(console, findings)
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check_id, []).append(f)
    order = sorted(by_check, key=lambda c: (not gating.get(c, False), c))
    for check_id in order:
        group = by_check[check_id]
        failing = sorted_findings(f for f in group if f.status is not Status.PASS)
        passed = len(group) - len(failing)
        role = "gating" if gating.get(check_id, False) else "advisory"
        title = group[0].title
        if not failing:
            console.print(f"  [green]✓[/green] {title} [dim]({check_id}, {role})[/dim]: {passed} pass")
            continue
        fails = sum(1 for f in failing if f.status is Status.FAIL)
        errors = len(failing) - fails
        counts = ", ".join(p for p in (f"{fails} fail" if fails else "", f"{errors} error" if errors else "") if p)
        mark = "[red]✗[/red]" if fails else "[yellow]![/yellow]"
        console.print(f"  {mark} {title} [dim]({check_id}, {role})[/dim]: {counts}, {passed} pass")
        if check_id in MFA_CHECKS:
            continue  # listed above, user by user
        for f in failing[:MAX_LISTED]:
            console.print(f"      {f.resource_id}: {f.summary}")
        if len(failing) > MAX_LISTED:
            console.print(f"      … and {len(failing) - MAX_LISTED} more (--output json lists every finding)")
        remediation = next((f.remediation for f in failing if f.remediation), "")
        if fails and remediation:
            console.print(f"      [dim]Fix: {remediation}[/dim]")


def _print_users_without_mfa(console: Console, findings: list[Finding]) -> None:
    users = {f.resource_id: f for f in findings if f.check_id == "iam.user_mfa" and f.status is Status.FAIL}
    if not users:
        return
    ordered = sorted(users.values(), key=lambda f: (not f.details.get("console_password", False), f.resource_id))
    console.print(f"  Users without MFA ({len(ordered)}), console users first:")
    for f in ordered[: MAX_LISTED * 5]:
        kind = "console password" if f.details.get("console_password") else "API only"
        console.print(f"    [red]✗[/red] {f.details.get('user_name', f.resource_id)!s:<24} {kind}")
    if len(ordered) > MAX_LISTED * 5:
        console.print(f"    … and {len(ordered) - MAX_LISTED * 5} more (--output json lists every finding)")
