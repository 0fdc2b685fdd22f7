"""The committed JSON Schemas and AsyncAPI document (shared/schemas/) are what the code generates, the AsyncAPI
document is what `faststream docs gen` renders, and every subject a service subscribes to is documented."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

from services.cli.stack import SERVICES
from shared.asyncapi import SCHEMAS_DIR, channels, documents
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_committed_schemas_are_current() -> None:
    generated = documents()
    committed = {path.name: path.read_text(encoding="utf-8") for path in SCHEMAS_DIR.glob("*.json")}
    assert sorted(committed) == sorted(generated), "run `make schemas`"
    stale = [name for name, text in generated.items() if committed[name] != text]
    assert stale == [], f"out of date: {stale}; run `make schemas`"


def test_asyncapi_is_what_faststream_docs_gen_renders(tmp_path: Path) -> None:
    out = tmp_path / "asyncapi.json"
    faststream = Path(sys.executable).with_name("faststream")
    command = [str(faststream), "docs", "gen", "--factory", "shared.asyncapi:docs_app", "-o", str(out)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=60)
    document = json.loads(out.read_text())
    assert document == json.loads((SCHEMAS_DIR / "asyncapi.json").read_text())
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"] for channel in document["channels"].values()}
    assert {"kushim.runs.requested", "kushim.runs.completed", "kushim.runs.rejected", "kushim.api.report"} <= addresses


def _covers(pattern: str, subject: str) -> bool:
    if pattern.endswith(".>"):
        return subject.startswith(pattern[:-1])
    return pattern == subject


def test_every_subscribed_subject_is_documented() -> None:
    documented = {channel.subject for channel in channels()}
    settings = Settings()
    for name, factory in SERVICES.items():
        app = factory(settings, url="nats://127.0.0.1:1")  # builds subscribers, connects to nothing
        for subscriber in app.broker.subscribers:
            subject = str(cast(Any, subscriber).subject.broker_address)
            assert any(_covers(subject, d) for d in documented), f"{name} subscribes to undocumented {subject}"


def test_public_requests_refuse_unknown_fields() -> None:
    schema = json.loads((SCHEMAS_DIR / "RunRequested.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) >= {"schema_version", "request_id", "accounts", "services", "requested_at"}
