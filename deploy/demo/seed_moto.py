"""Seed a moto server with the demo account of `kushim demo` (the compose `demo` profile's `moto-seed` job).

Usage: python seed_moto.py http://moto:5000

Runs in the moto image (which brings boto3), with services/cli/demo_account.py mounted next to this file: the
compose demo and `kushim demo` check the same account. A server that already holds the demo evidence bucket is
left alone, so that `docker compose up` may run this job again while moto keeps its state.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from demo_account import DEMO_EVIDENCE_BUCKET, DEMO_REGION, seed_demo_account


def already_seeded(endpoint: str) -> bool:
    import boto3  # the moto image brings boto3

    s3 = boto3.client(
        "s3",
        region_name=DEMO_REGION,
        endpoint_url=endpoint,
        aws_access_key_id="demo",
        aws_secret_access_key="demo",  # noqa: S106 - moto's dummy credentials
    )
    return any(bucket["Name"] == DEMO_EVIDENCE_BUCKET for bucket in s3.list_buckets().get("Buckets", []))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: seed_moto.py <moto endpoint, e.g. http://moto:5000>", file=sys.stderr)
        return 2
    endpoint = argv[1]
    if already_seeded(endpoint):
        print(f"moto at {endpoint} already holds the demo account; nothing to do")
        return 0
    seed_demo_account(endpoint)
    print(f"moto at {endpoint} seeded with the demo account (evidence bucket {DEMO_EVIDENCE_BUCKET})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
