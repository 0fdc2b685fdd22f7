"""The IAM collector service: CheckRequested on `kushim.checks.iam` in, FindingsReported chunks out."""

from __future__ import annotations

from services.collector_iam.checks import CHECKS
from services.collector_iam.collect import collect
from services.collector_iam.snapshot import GLOBAL, IamSnapshot, IamUser
from shared.aws import AwsClients
from shared.collector import CollectorSpec, Summary, register_collector
from shared.messages import Service
from shared.nats import make_broker
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
    """Population counts and MFA percentages; nothing is counted when the user list could not be read."""
    if snapshot.list_error is not None:
        return Summary(population={}, metrics={}, regions=[GLOBAL])
    users = list(snapshot.users)
    console_users = [user for user in users if user.console_password]
    metrics: dict[str, float] = {}
    for key, group in (("mfa_percent", users), ("console_mfa_percent", console_users)):
        percent = _mfa_percent(group)
        if percent is not None:
            metrics[key] = percent
    return Summary(
        population={"users": len(users), "console_users": len(console_users)}, metrics=metrics, regions=[GLOBAL]
    )


SPEC: CollectorSpec[IamSnapshot] = CollectorSpec(
    service=Service.IAM, checks=CHECKS, collect=collect, summarize=summarize
)


def create_service(settings: Settings, *, url: str, aws: AwsClients | None = None) -> ServiceApp:
    """Build the service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    broker = make_broker(url, name=NAME, settings=settings)
    register_collector(broker, SPEC, aws=aws or AwsClients(settings), settings=settings)
    return ServiceApp(name=NAME, broker=broker, url=url, settings=settings)
