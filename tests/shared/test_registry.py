"""The account registry file: validation with clear reasons, edits that keep the file's comments, and the services'
view of it (re-read on change, the last good version kept when a change is invalid)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.accounts import (
    Account,
    AssumeRoleAccess,
    RegistryError,
    RegistryFile,
    add_account,
    load_registry,
    new_external_id,
    parse_registry,
    remove_account,
    trust_policy,
)
from shared.log import configure_logging

ROLE = "arn:aws:iam::111111111111:role/KushimAudit"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


def test_no_file_means_no_registry(tmp_path: Path) -> None:
    assert load_registry(tmp_path / "accounts.toml") is None
    assert RegistryFile(tmp_path / "accounts.toml").current() is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("accounts = [", "is not valid TOML"),
        ('[[accounts]]\nid = "12345"\nname = "x"', "accounts.0.id: String should match pattern"),
        (
            '[[accounts]]\nid = "111111111111"\nname = "a"\n[[accounts]]\nid = "111111111111"\nname = "b"',
            "listed twice",
        ),
        (
            '[[accounts]]\nid = "111111111111"\nname = "a"\n[[tenants]]\nname = "t"\naccounts = ["222222222222"]',
            "tenant t lists unregistered account(s) 222222222222",
        ),
        (
            '[[accounts]]\nid = "222222222222"\nname = "a"\naccess = { kind = "assume_role", role_arn = "'
            + ROLE
            + '", external_id = "kushim-x1" }',
            "the role Kushim assumes must be in the account it checks",
        ),
        ('[[accounts]]\nid = "111111111111"\nname = "a"\nschedule = "every day"', "not a 5-field cron expression"),
        ('[[accounts]]\nid = "111111111111"\nname = "a"\nschedule = "* * * * * */5"', "not a 5-field cron expression"),
        ('[[accounts]]\nid = "111111111111"\nname = "a"\nregions = ["all", "us-east-1"]', '"all" stands alone'),
        ('[[accounts]]\nid = "111111111111"\nname = "a"\ncolour = "blue"', "accounts.0.colour: Extra inputs"),
        ('[[accounts]]\nid = "111111111111"\nname = "a"\naccess = { kind = "magic" }', "accounts.0.access"),
    ],
)
def test_invalid_registries_are_refused_with_the_file_and_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(text)
    with pytest.raises(RegistryError) as caught:
        load_registry(path)
    assert str(path) in str(caught.value)
    assert reason in str(caught.value)


def test_edits_keep_comments_and_remove_drops_the_account_from_tenants(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text(
        '# our accounts, reviewed quarterly\nschema_version = 1\n\n[[accounts]]\nid = "222222222222"\nname = "dev"\n'
        '\n[[tenants]]\nname = "billing"  # the billing team\naccounts = ["222222222222"]\n'
    )
    external_id = new_external_id()
    access = AssumeRoleAccess(kind="assume_role", role_arn=ROLE, external_id=external_id)
    registry = add_account(path, Account(id="111111111111", name="prod", access=access))
    assert registry.ids == {"111111111111", "222222222222"}
    text = path.read_text()
    assert "# our accounts, reviewed quarterly" in text
    assert "# the billing team" in text
    assert external_id in text
    with pytest.raises(RegistryError, match="already registered"):
        add_account(path, Account(id="111111111111", name="again"))

    registry, touched = remove_account(path, "222222222222")
    assert registry.ids == {"111111111111"}
    assert touched == ["billing"]
    assert registry.tenants == []  # a tenant left without accounts is removed
    with pytest.raises(RegistryError, match="not registered"):
        remove_account(path, "222222222222")


def test_an_invalid_file_is_not_edited(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text("accounts = [")
    with pytest.raises(RegistryError, match="not valid TOML"):
        add_account(path, Account(id="111111111111", name="prod"))
    assert path.read_text() == "accounts = ["


def test_services_reread_a_changed_file_and_keep_the_last_good_version(tmp_path: Path, log_lines: io.StringIO) -> None:
    path = tmp_path / "accounts.toml"
    add_account(path, Account(id="111111111111", name="prod"))
    view = RegistryFile(path)
    first = view.current()
    assert first is not None
    assert view.current() is first  # unchanged file: not re-read

    add_account(path, Account(id="222222222222", name="dev"))
    second = view.current()
    assert second is not None
    assert second.ids == {"111111111111", "222222222222"}

    path.write_text("accounts = [")  # a broken ConfigMap update
    os.utime(path, ns=(1, 1))
    assert view.current() is second
    assert "account_registry_invalid" in log_lines.getvalue()
    with pytest.raises(RegistryError):  # a service starting on a broken file refuses to start
        RegistryFile(path).current()

    path.unlink()  # a ConfigMap being recreated: still the last registry, not "back to one account"
    assert view.current() is second
    assert "account_registry_missing" in log_lines.getvalue()


def test_external_ids_are_fresh_and_fit_aws_rules() -> None:
    ids = {new_external_id() for _ in range(100)}
    assert len(ids) == 100
    for external_id in ids:
        AssumeRoleAccess(kind="assume_role", role_arn=ROLE, external_id=external_id)  # validates the pattern
        assert 2 <= len(external_id) <= 1224


def test_trust_policy_requires_the_external_id() -> None:
    policy = trust_policy("arn:aws:iam::999999999999:root", "kushim-abc")
    statement = policy["Statement"][0]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::999999999999:root"}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "kushim-abc"}}


def test_parse_names_the_source() -> None:
    with pytest.raises(RegistryError, match="configmap is invalid"):
        parse_registry('[[accounts]]\nid = "1"\nname = "x"', "configmap")


def test_an_edited_file_keeps_its_permissions_and_ends_with_a_newline(tmp_path: Path) -> None:
    path = tmp_path / "accounts.toml"
    path.write_text('schema_version = 1\n[[accounts]]\nid = "222222222222"\nname = "dev"\n')
    path.chmod(0o600)
    add_account(path, Account(id="111111111111", name="prod"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().endswith("\n")
