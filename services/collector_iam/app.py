"""The IAM collector service: CheckRequested on `kushim.checks.iam` in, FindingsReported chunks out."""

from __future__ import annotations

from services.collector_iam.checks import CHECKS
from services.collector_iam.collect import collect
from services.collector_iam.snapshot import GLOBAL, IamSnapshot, IamUser
from shared.aws import AwsClients
from shared.collector import CollectorSpec, Summary, collector_service
from shared.messages import Service
from shared.observability import Observability
from shared.service import ServiceApp
from shared.settings import Settings

NAME = "collector-iam"


def _mfa_percent(users: list[IamUser]) -> float | None:
    """Share of users with MFA among those whose MFA devices could be read; None when there are none."""
    known = [user for user in users if user.has_mfa is not None]
    if not known:
        return None
    return round(100.0 * sum(1 for user in known if user.has_mfa) / len(known), 1)


def summarize(snapshot: IamSnapshot) -> Summary:
    """Population counts and metrics of IAM users (never the root user), plus root's MFA when it is known.

    Nothing about users is counted when the user list could not be read; the active keys are not counted when any
    user's keys could not be listed (a smaller count would pass for the truth).
    """
    metrics: dict[str, float] = {}
    root = snapshot.root
    if root is not None and root.error is None:
        metrics["root_mfa"] = 1.0 if root.mfa_active else 0.0
    if snapshot.list_error is not None:
        return Summary(population={}, metrics=metrics, regions=[GLOBAL])
    users = list(snapshot.users)
    console_users = [user for user in users if user.console_password]
    for key, group in (("mfa_percent", users), ("console_mfa_percent", console_users)):
        percent = _mfa_percent(group)
        if percent is not None:
            metrics[key] = percent
    population = {"users": len(users), "console_users": len(console_users)}
    if all(user.access_keys_error is None for user in users):
        population["active_access_keys"] = sum(len(user.active_keys) for user in users)
    return Summary(population=population, metrics=metrics, regions=[GLOBAL])


SPEC: CollectorSpec[IamSnapshot] = CollectorSpec(
    service=Service.IAM, checks=CHECKS, collect=collect, summarize=summarize
)


def create_service(
    settings: Settings, *, url: str, aws: AwsClients | None = None, observability: Observability | None = None
) -> ServiceApp:
    """Build the service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    return collector_service(NAME, SPEC, settings, url=url, aws=aws, observability=observability)
