"""`kushim evidence verify`: re-read every manifest chain and every evidence object, and report what changed.

For each account, the manifests under `manifests/<account>/` are read in key (= chain) order:
- each manifest's `sequence` must be its position and its `previous_sha256` the SHA-256 of the manifest before it
  (the first names the genesis hash): a changed, removed, inserted or reordered manifest breaks the chain there;
- each object a manifest lists is read back: absent → `missing`, other bytes → `changed`;
- every object under `evidence/<account>/` that no manifest lists → `added` (objects of runs still open, which
  the database says are not yet in a manifest, are skipped);
- with the database at hand, its chain head and its record of each manifest must match what the source holds (a
  deleted last manifest, or a manifest rewritten together with its successors, shows up only there).

The source is the evidence bucket (S3) or, without one, the database's own copies. `since` limits the object reads
and the `added` search to runs requested on or after that time; the chain itself is always checked whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from botocore.exceptions import ClientError
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from services.evidence.manifest import (
    GENESIS_SHA256,
    ManifestBody,
    evidence_prefix,
    manifest_key,
    manifest_prefix,
    parse_manifest,
)
from services.evidence.store import ChainHead, EvidenceStore, ManifestRecord
from shared.aws import AwsClients, error_code
from shared.credentials import default_clients
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client


class ProblemKind(StrEnum):
    changed = "changed"
    missing = "missing"
    added = "added"
    chain_break = "chain-break"


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    account_id: str
    key: str
    detail: str


@dataclass
class Verification:
    source: str
    accounts: list[str] = field(default_factory=list)
    manifests: int = 0
    objects: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Source(Protocol):
    """Where the evidence lives: keys by prefix, bytes by key (None when absent)."""

    @property
    def description(self) -> str: ...

    async def keys(self, prefix: str) -> list[str]: ...

    async def read(self, key: str) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Ledger:
    """What the database says: chain heads, manifests by key, evidence keys not yet in a manifest, runs still
    open, and the objects kept only in the database (written while no bucket was configured)."""

    heads: dict[str, ChainHead]
    manifests: dict[str, ManifestRecord]
    unsealed: set[str]
    open_runs: set[str] = field(default_factory=set)
    database_objects: dict[str, bytes] = field(default_factory=dict)

    def pending(self, key: str) -> bool:
        """A manifest committed (the chain advanced) whose upload has not happened yet (an S3 outage)."""
        record = self.manifests.get(key)
        return record is not None and record.location is None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _day(key: str, account_id: str) -> datetime | None:
    """The run date in an evidence key `evidence/<account>/<yyyy>/<mm>/<dd>/...`."""
    parts = key[len(evidence_prefix(account_id)) :].split("/")
    try:
        return datetime(int(parts[0]), int(parts[1]), int(parts[2]), tzinfo=UTC)
    except (IndexError, ValueError):
        return None


_ACCOUNT = re.compile(r"^[0-9]{12}$")
_TOP_PREFIXES = ("manifests/", "evidence/")


async def accounts_in(source: Source, ledger: Ledger | None) -> list[str]:
    found = {key.split("/")[1] for prefix in _TOP_PREFIXES for key in await source.keys(prefix)}
    if ledger is not None:
        found |= set(ledger.heads)
    return sorted(a for a in found if _ACCOUNT.fullmatch(a))


async def verify(
    source: Source,
    *,
    accounts: Sequence[str],
    ledger: Ledger | None = None,
    since: datetime | None = None,
) -> Verification:
    result = Verification(source=source.description, accounts=list(accounts))
    for account_id in accounts:
        await _verify_account(source, account_id, ledger, since, result)
    # Objects outside any account's prefix were not written by Kushim: `evidence/x.json`, `manifests//y`.
    for prefix in _TOP_PREFIXES:
        for key in await source.keys(prefix):
            parts = key.split("/")
            if len(parts) < 3 or not _ACCOUNT.fullmatch(parts[1]):
                result.problems.append(Problem(ProblemKind.added, "-", key, "object outside any account's prefix"))
    return result


def _run_of(key: str) -> str | None:
    """The run id in `evidence/<account>/<yyyy>/<mm>/<dd>/<run_id>/<service>.json`."""
    parts = key.split("/")
    return parts[5] if len(parts) == 7 else None


async def _verify_account(
    source: Source, account_id: str, ledger: Ledger | None, since: datetime | None, result: Verification
) -> None:
    def problem(kind: ProblemKind, key: str, detail: str) -> None:
        result.problems.append(Problem(kind, account_id, key, detail))

    listed: set[str] = set()
    previous_sha, previous_key = GENESIS_SHA256, "(genesis)"
    keys = await source.keys(manifest_prefix(account_id))
    for position, key in enumerate(keys, start=1):
        data = await source.read(key)
        if data is None:  # listed a moment ago, gone now
            problem(ProblemKind.missing, key, "manifest disappeared while verifying")
            continue
        result.manifests += 1
        sha = _sha(data)
        recorded = ledger.manifests.get(key) if ledger is not None else None
        if ledger is not None and recorded is None:
            problem(ProblemKind.added, key, "manifest not recorded in the database")
        elif recorded is not None and recorded.sha256 != sha:
            problem(ProblemKind.changed, key, f"manifest SHA-256 {sha}, the database recorded {recorded.sha256}")
        try:
            manifest = parse_manifest(data)
        except ValidationError:
            problem(ProblemKind.chain_break, key, "not a readable Kushim manifest")
            previous_sha, previous_key = sha, key
            continue
        if manifest.account_id != account_id or key != manifest_key(account_id, manifest.sequence, manifest.run_id):
            problem(
                ProblemKind.chain_break,
                key,
                f"manifest content names {manifest_key(account_id, manifest.sequence, manifest.run_id)}",
            )
        if manifest.sequence != position:
            problem(ProblemKind.chain_break, key, f"sequence {manifest.sequence} at chain position {position}")
        if manifest.previous_sha256 != previous_sha:
            problem(
                ProblemKind.chain_break,
                key,
                f"previous_sha256 {manifest.previous_sha256} does not match {previous_key} ({previous_sha})",
            )
        await _verify_objects(source, manifest, since, result, problem)
        listed.update(o.key for o in manifest.objects)
        previous_sha, previous_key = sha, key

    if ledger is not None:
        present = set(keys)
        for key, record in sorted(ledger.manifests.items()):
            if record.account_id != account_id or key in present:
                continue
            if ledger.pending(key):  # committed, upload still to come: its objects are accounted for
                listed.update(o.key for o in parse_manifest(record.body).objects)
                continue
            problem(ProblemKind.missing, key, f"manifest {record.sequence} of run {record.run_id} is gone")
        head = ledger.heads.get(account_id)
        head_pending = head is not None and head.key is not None and ledger.pending(head.key)
        if head is not None and head.sequence > 0 and not head_pending and head.sha256 != previous_sha:
            problem(
                ProblemKind.chain_break,
                head.key or manifest_prefix(account_id),
                f"the database's chain head is manifest {head.sequence} ({head.sha256}); the source's chain ends at "
                f"{previous_key} ({previous_sha})",
            )

    unsealed = ledger.unsealed if ledger is not None else set()
    open_runs = ledger.open_runs if ledger is not None else set()
    for key in await source.keys(evidence_prefix(account_id)):
        if key in listed or key in unsealed or _run_of(key) in open_runs:
            continue  # listed, or of a run still open (its manifest comes when the run is final)
        day = _day(key, account_id)
        if since is not None and day is not None and day < since.replace(hour=0, minute=0, second=0, microsecond=0):
            continue
        problem(ProblemKind.added, key, "object listed by no manifest")


async def _verify_objects(
    source: Source, manifest: ManifestBody, since: datetime | None, result: Verification, problem: _Report
) -> None:
    if since is not None and manifest.requested_at < since:
        return
    for entry in manifest.objects:
        data = await source.read(entry.key)
        result.objects += 1
        if data is None:
            problem(ProblemKind.missing, entry.key, f"listed by manifest {manifest.sequence}, not found")
            continue
        sha = _sha(data)
        if sha != entry.sha256:
            problem(ProblemKind.changed, entry.key, f"SHA-256 {sha}, manifest {manifest.sequence} lists {entry.sha256}")


class _Report(Protocol):
    def __call__(self, kind: ProblemKind, key: str, detail: str) -> None: ...


class S3Source:
    """The evidence bucket, read with one S3 client (ListObjectsV2 + GetObject)."""

    def __init__(self, client: S3Client, bucket: str) -> None:
        self._s3 = client
        self._bucket = bucket

    @property
    def description(self) -> str:
        return f"s3://{self._bucket}"

    async def keys(self, prefix: str) -> list[str]:
        found: list[str] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self._bucket, Prefix=prefix):
            found.extend(str(o["Key"]) for o in page.get("Contents", []))
        return sorted(found)

    async def read(self, key: str) -> bytes | None:
        try:
            response = await self._s3.get_object(Bucket=self._bucket, Key=key)
        except ClientError as exc:
            if error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        async with response["Body"] as stream:
            return bytes(await stream.read())


class LayeredSource:
    """The bucket, plus the objects written while no bucket was configured (kept only in the database)."""

    def __init__(self, bucket: Source, database_objects: dict[str, bytes]) -> None:
        self._bucket = bucket
        self._database = database_objects

    @property
    def description(self) -> str:
        extra = f" (+{len(self._database)} object(s) kept in the database)" if self._database else ""
        return self._bucket.description + extra

    async def keys(self, prefix: str) -> list[str]:
        local = {k for k in self._database if k.startswith(prefix)}
        return sorted(set(await self._bucket.keys(prefix)) | local)

    async def read(self, key: str) -> bytes | None:
        if key in self._database:
            return self._database[key]
        return await self._bucket.read(key)


class DatabaseSource:
    """The database's own copies (evidence kept without a bucket)."""

    def __init__(self, objects: dict[str, bytes], url: str) -> None:
        self._objects = objects
        self._url = url

    @property
    def description(self) -> str:
        return f"database {self._url}"

    async def keys(self, prefix: str) -> list[str]:
        return sorted(k for k in self._objects if k.startswith(prefix))

    async def read(self, key: str) -> bytes | None:
        return self._objects.get(key)


async def load_ledger(store: EvidenceStore) -> Ledger:
    records = await store.manifest_records()
    return Ledger(
        heads=await store.chain_heads(),
        manifests={r.key: r for r in records},
        unsealed=await store.unlisted_evidence_keys(),
        open_runs=await store.open_run_ids(),
        database_objects=await store.stored_objects(location="database"),
    )


async def verify_evidence(
    settings: Settings,
    *,
    account_id: str | None = None,
    since: datetime | None = None,
    aws: AwsClients | None = None,
) -> Verification:
    """Verify the configured evidence: the bucket when AWS_S3_BUCKET_NAME is set, else the database's copies.
    The database (KUSHIM_DATABASE_URL) must be at this Kushim's schema: it holds the chain heads."""
    store = EvidenceStore(settings.effective_database_url)
    try:
        await store.check_schema()
        ledger = await load_ledger(store)
        if settings.evidence_bucket:
            async with (aws or default_clients(settings)).client("s3") as client:
                source: Source = LayeredSource(S3Source(client, settings.evidence_bucket), ledger.database_objects)
                accounts = [account_id] if account_id else await accounts_in(source, ledger)
                return await verify(source, accounts=accounts, ledger=ledger, since=since)
        source = DatabaseSource(await store.stored_objects(), safe_database_url(settings.effective_database_url))
        accounts = [account_id] if account_id else await accounts_in(source, ledger)
        return await verify(source, accounts=accounts, ledger=ledger, since=since)
    finally:
        await store.close()


def safe_database_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)
