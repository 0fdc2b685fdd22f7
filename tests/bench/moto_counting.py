"""moto's server in a child process, counting every AWS request it answers: `python -m tests.bench.moto_counting`.

The WSGI app is moto's own (`DomainDispatcherApplication(create_backend_app)` under werkzeug's threaded
`run_simple`, as `moto.server.main` builds it; imported from `moto.moto_server.werkzeug_app`, where `moto.server`
gets them), wrapped in `CountingMiddleware`, which counts each request by (caller, AWS service, operation, HTTP
status) with the time spent inside moto:

- the caller is the access key id of the request's SigV4 credential scope (the benchmark gives each Kushim
  process its own dummy key, so calls are attributed to the process that made them);
- the service is the credential scope's service, else guessed from the host/path;
- the operation is the `X-Amz-Target` header's last part (JSON protocols: CloudTrail, KMS), else the `Action`
  form field or query parameter (query protocol: IAM, STS), else for S3 the REST request's method, path and
  sub-resource (`?encryption`, `?versioning`, `?logging`, `?publicAccessBlock`, `?location`, ... or botocore's
  `x-id`).

werkzeug's per-request log lines are turned off (errors are still logged). Like every werkzeug server, it answers
`Connection: close`: each request is a new TCP connection and a new server thread.

Private paths, answered by the middleware and never counted:
`GET /__kushim_bench/calls` (the counts as JSON) and `POST /__kushim_bench/reset` (zero them).

The parent side is `counting_moto()`: a context manager that starts the child on a free loopback port, waits until
it answers and stops it; `fetch_calls()` and `reset_calls()` talk to it. Importing this module does nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

PRIVATE_PREFIX = "/__kushim_bench"
CALLS_PATH = f"{PRIVATE_PREFIX}/calls"
RESET_PATH = f"{PRIVATE_PREFIX}/reset"

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")
_FORM_TYPE = "application/x-www-form-urlencoded"
_MAX_FORM_BYTES = 1024 * 1024

# S3 bucket sub-resources: the query key -> the operation's name without its GET/PUT/DELETE prefix.
S3_SUBRESOURCES: dict[str, str] = {
    "accelerate": "BucketAccelerateConfiguration",
    "acl": "BucketAcl",
    "analytics": "BucketAnalyticsConfiguration",
    "cors": "BucketCors",
    "encryption": "BucketEncryption",
    "intelligent-tiering": "BucketIntelligentTieringConfiguration",
    "inventory": "BucketInventoryConfiguration",
    "lifecycle": "BucketLifecycleConfiguration",
    "location": "BucketLocation",
    "logging": "BucketLogging",
    "metrics": "BucketMetricsConfiguration",
    "notification": "BucketNotificationConfiguration",
    "object-lock": "ObjectLockConfiguration",
    "ownershipControls": "BucketOwnershipControls",
    "policy": "BucketPolicy",
    "policyStatus": "BucketPolicyStatus",
    "publicAccessBlock": "PublicAccessBlock",
    "replication": "BucketReplication",
    "requestPayment": "BucketRequestPayment",
    "tagging": "BucketTagging",
    "versioning": "BucketVersioning",
    "website": "BucketWebsite",
}
_VERB = {"GET": "Get", "PUT": "Put", "DELETE": "Delete", "HEAD": "Head", "POST": "Post"}


# ---------------------------------------------------------------------------------------------
# Naming a request
# ---------------------------------------------------------------------------------------------


def credential_scope(environ: dict[str, Any]) -> tuple[str, str] | None:
    """(access key id, service) from the SigV4 Authorization header or a presigned URL's X-Amz-Credential."""
    match = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
    if match:
        return match.group(1), match.group(3)
    credential = parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential")
    if credential:
        parts = credential[0].split("/")
        if len(parts) >= 5:
            return parts[0], parts[3]
    return None


def s3_operation(method: str, path: str, query: dict[str, list[str]]) -> str:
    """The S3 REST operation of a path-style request (`/bucket[/key]`)."""
    if "x-id" in query and query["x-id"][0]:
        return query["x-id"][0]
    parts = path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    verb = _VERB.get(method, method.title())
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{verb}Service"
    if not key:
        if method == "POST" and "delete" in query:
            return "DeleteObjects"
        for name, operation in S3_SUBRESOURCES.items():
            if name in query:
                return f"{verb}{operation}"
        if "uploads" in query:
            return "ListMultipartUploads"
        if "versions" in query:
            return "ListObjectVersions"
        if method == "GET":
            return "ListObjectsV2" if query.get("list-type") == ["2"] else "ListObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, f"{verb}Bucket")
    if "tagging" in query:
        return f"{verb}ObjectTagging"
    if "acl" in query:
        return f"{verb}ObjectAcl"
    if "uploads" in query:
        return "CreateMultipartUpload"
    if "uploadId" in query:
        return {"PUT": "UploadPart", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}.get(
            method, "ListParts"
        )
    return f"{verb}Object"


def _service_from_host(environ: dict[str, Any]) -> str:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/moto-api"):
        return "moto-api"
    host = environ.get("HTTP_HOST", "").split(":", 1)[0]
    label = host.split(".", 1)[0]
    return label if label and not label.isdigit() and label != "localhost" else "unknown"


def _form_action(environ: dict[str, Any]) -> str | None:
    """The `Action` field of a form-encoded body; the body is put back for moto to read."""
    if not environ.get("CONTENT_TYPE", "").startswith(_FORM_TYPE):
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if length <= 0 or length > _MAX_FORM_BYTES:
        return None
    body = environ["wsgi.input"].read(length)
    environ["wsgi.input"] = io.BytesIO(body)
    action = parse_qs(body.decode("utf-8", "replace")).get("Action")
    return action[0] if action else None


def name_request(environ: dict[str, Any]) -> tuple[str, str, str]:
    """(caller, service, operation) of one request."""
    scope = credential_scope(environ)
    caller, service = scope if scope else ("anonymous", _service_from_host(environ))
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return caller, service, target.rsplit(".", 1)[-1]
    action = query.get("Action", [None])[0] or _form_action(environ)
    if action:
        return caller, service, action
    method = environ.get("REQUEST_METHOD", "GET").upper()
    if service == "s3":
        return caller, service, s3_operation(method, environ.get("PATH_INFO", "/"), query)
    return caller, service, f"{method} {environ.get('PATH_INFO', '/')}"


# ---------------------------------------------------------------------------------------------
# The middleware
# ---------------------------------------------------------------------------------------------

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass
class OperationStats:
    count: int = 0
    errors: int = 0
    """Answers with an HTTP status >= 400 (moto's 404 for GetLoginProfile of a user without a password counts)."""
    seconds: float = 0.0
    """Time inside moto (request read to response body produced); requests overlap, so sums exceed wall time."""


class CountingMiddleware:
    """Counts every request the wrapped WSGI app answers, by (caller, service, operation, status)."""

    def __init__(self, app: WsgiApp) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._stats: dict[tuple[str, str, str], OperationStats] = {}
        self._statuses: dict[tuple[str, str, str, int], int] = {}
        self._since = time.time()

    def reset(self) -> None:
        with self._lock:
            self._stats.clear()
            self._statuses.clear()
            self._since = time.time()

    def document(self) -> dict[str, Any]:
        with self._lock:
            calls = [
                {
                    "caller": caller,
                    "service": service,
                    "operation": operation,
                    "count": stats.count,
                    "errors": stats.errors,
                    "seconds": round(stats.seconds, 6),
                    "statuses": {
                        str(status): n
                        for (c, s, o, status), n in sorted(self._statuses.items())
                        if (c, s, o) == (caller, service, operation)
                    },
                }
                for (caller, service, operation), stats in sorted(self._stats.items())
            ]
            return {"since": self._since, "total": sum(stats.count for stats in self._stats.values()), "calls": calls}

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(PRIVATE_PREFIX):
            return self._private(environ, start_response)
        key = name_request(environ)
        status_code = [0]

        def counting_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            with contextlib.suppress(ValueError, IndexError):
                status_code[0] = int(status.split(" ", 1)[0])
            return start_response(status, headers, exc_info)

        started = time.perf_counter()
        try:
            result = self._app(environ, counting_start_response)
            try:
                body = [bytes(chunk) for chunk in result]  # moto answers from memory: materialised, then timed
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            status_code[0] = status_code[0] or 500
            raise
        finally:
            self._record(key, status_code[0], time.perf_counter() - started)
        return body

    def _record(self, key: tuple[str, str, str], status: int, seconds: float) -> None:
        with self._lock:
            stats = self._stats.setdefault(key, OperationStats())
            stats.count += 1
            stats.seconds += seconds
            if status >= 400 or status == 0:
                stats.errors += 1
            status_key = (*key, status)
            self._statuses[status_key] = self._statuses.get(status_key, 0) + 1

    def _private(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET").upper()
        if path == CALLS_PATH and method == "GET":
            payload = json.dumps(self.document()).encode()
        elif path == RESET_PATH and method == "POST":
            self.reset()
            payload = b'{"reset": true}'
        else:
            start_response("404 Not Found", [("Content-Type", "application/json")])
            return [b'{"error": "unknown benchmark path"}']
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
        return [payload]


def serve(host: str, port: int) -> None:
    """Run moto's WSGI app behind the counter until SIGTERM/SIGINT (werkzeug's threaded server, as moto's CLI)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import run_simple

    os.environ.setdefault("MOTO_PORT", str(port))
    # werkzeug logs every request at INFO to stderr; real AWS does not make the caller wait for a log line
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    def stop(signum: int, frame: Any) -> None:
        sys.exit(0)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(host, port, CountingMiddleware(app), threaded=True, request_handler=MotoRequestHandler)


# ---------------------------------------------------------------------------------------------
# The parent's side
# ---------------------------------------------------------------------------------------------


def fetch_calls(endpoint: str, timeout: float = 30.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{endpoint}{CALLS_PATH}", timeout=timeout) as response:
        document: dict[str, Any] = json.loads(response.read())
    return document


def reset_calls(endpoint: str, timeout: float = 30.0) -> None:
    request = urllib.request.Request(f"{endpoint}{RESET_PATH}", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()


@dataclass
class MotoChild:
    endpoint: str
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _free_port() -> int:
    from shared.embedded import free_port

    return free_port()


@contextlib.contextmanager
def counting_moto(log_dir: Path, *, startup_timeout: float = 60.0) -> Iterator[MotoChild]:
    """A fresh counting moto server in a child process on a free loopback port; stopped on exit."""
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "KUSHIM_", "MOTO_"))}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "moto.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.bench.moto_counting", "--host", "127.0.0.1", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
    child = MotoChild(endpoint=f"http://127.0.0.1:{port}", process=process, log_file=log_file)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                tail = log_file.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the counting moto server exited with code {process.returncode}: {tail}")
            try:
                fetch_calls(child.endpoint, timeout=1.0)
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the counting moto server did not answer within {startup_timeout}s") from None
                time.sleep(0.1)
        yield child
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.moto_counting",
        description="moto's server, counting the requests it answers (GET /__kushim_bench/calls).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    serve(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
