"""A tiny local CloudTrail endpoint (aiohttp) that records when each request arrives, per region and operation.

Rate-limit tests assert on these arrival times, never on the limiter's own bookkeeping. The region comes from the
request's SigV4 credential scope, the operation from its X-Amz-Target header.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CREDENTIAL_SCOPE = re.compile(r"Credential=[^/]+/\d{8}/([a-z0-9-]+)/cloudtrail/")


@dataclass(frozen=True, slots=True)
class Seen:
    at: float
    region: str
    operation: str
    params: dict[str, Any]


Reply = tuple[int, dict[str, Any]]
Script = Callable[[Seen, int], Reply]
"""(request, how many requests of this operation and region came before it) -> (HTTP status, JSON body)."""


def throttled() -> Reply:
    return 400, {"__type": "ThrottlingException", "message": "Rate exceeded"}


@dataclass(slots=True)
class CloudTrailStub:
    replies: dict[str, Script]
    seen: list[Seen] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def times(self, operation: str, region: str) -> list[float]:
        return [s.at for s in self.seen if s.operation == operation and s.region == region]

    def requests(self, operation: str, region: str) -> list[Seen]:
        return [s for s in self.seen if s.operation == operation and s.region == region]

    async def _handle(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        operation = request.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
        scope = CREDENTIAL_SCOPE.search(request.headers.get("Authorization", ""))
        raw = await request.read()
        seen = Seen(arrived, scope.group(1) if scope else "unknown", operation, json.loads(raw) if raw else {})
        before = len(self.requests(operation, seen.region))
        self.seen.append(seen)
        script = self.replies.get(operation)
        status, body = script(seen, before) if script else (400, {"__type": "UnknownOperationException"})
        return web.Response(status=status, body=json.dumps(body), content_type="application/x-amz-json-1.1")


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]
