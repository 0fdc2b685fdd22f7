"""The container image's HEALTHCHECK: GET http://127.0.0.1:$KUSHIM_HTTP_PORT/healthz (default port 8080).

`kushim serve` listens on 0.0.0.0 unless KUSHIM_HTTP_HOST says otherwise; a KUSHIM_HTTP_HOST other than 0.0.0.0 or
127.0.0.1 is not reachable from here (override the check then).

Exit 0 on a 2xx answer, 1 otherwise (refused, timed out, any other status). The image has no curl or wget: this
runs on the image's own Python, standard library only, so it works in the slim image as it is. It is not part of
the `kushim` package; the Dockerfile copies it to /usr/local/lib/kushim/healthcheck.py.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 4.0


def main() -> int:
    port = os.environ.get("KUSHIM_HTTP_PORT", "8080")
    if not port.isdigit() or int(port) == 0:
        # 0 turns the HTTP server off: there is nothing to ask, and "healthy" would be a guess
        print(f"healthcheck: KUSHIM_HTTP_PORT={port!r} names no HTTP server to check", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        # a fixed http:// URL on loopback: no file:// or other scheme can reach urlopen
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        print(f"healthcheck: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"healthcheck: {url} unreachable: {exc}", file=sys.stderr)
        return 1
    return 0 if 200 <= status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
