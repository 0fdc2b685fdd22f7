"""The container image (deploy/Dockerfile) and the compose stack (docker-compose.yml), checked offline.

There is no Docker engine here: the image is never built and the stack never started. What can be checked without
one is: the compose file against the compose-spec schema, the Dockerfile with hadolint, and everything the schema
cannot see, against the code: each container's command is a real `kushim` command, each KUSHIM_* variable a real
setting, each NATS user one of deploy/nats/nats-server.conf with its role's rights (and the example passwords are
accepted by a real nats-server with that file), dependencies and their conditions, the image's final stage (non-root,
no moto or pytest), the build context's allow-list, the demo profile's seeding script on a real moto server.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import nats
import pytest
import typer.main
from ruamel.yaml import YAML

from services.cli.demo_account import DEMO_EVIDENCE_BUCKET, DEMO_REGION, DEMO_USERS
from services.cli.main import app
from services.cli.stack import SERVICES
from shared.accounts import parse_registry
from shared.embedded import start_nats
from shared.probes import DEFAULT_SERVE_PORT
from shared.settings import setting_env_names

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"
DEMO_ENV = ROOT / "deploy" / "compose.demo.env"
NATS_CONF = ROOT / "deploy" / "nats" / "nats-server.conf"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
SEED_SCRIPT = ROOT / "deploy" / "demo" / "seed_moto.py"
DEMO_ACCOUNT = ROOT / "services" / "cli" / "demo_account.py"
ACCOUNTS_EXAMPLE = ROOT / "deploy" / "accounts" / "accounts.toml.example"
PYPROJECT = ROOT / "pyproject.toml"
BIN = Path(sys.executable).parent

KUSHIM_IMAGE = "kushim:local"
NATS_USER_OF = {
    "scheduler": "scheduler",
    "collector-iam": "collector",
    "collector-s3": "collector",
    "collector-cloudtrail": "collector",
    "evidence": "evidence",
    "nats-init": "admin",
}
"""Which user of deploy/nats/nats-server.conf each Kushim container connects as (its role's narrow rights)."""
ONE_SHOTS = {"nats-init": ["nats", "init"], "db-migrate": ["db", "upgrade"]}
PER_CONTAINER = {
    "KUSHIM_NATS_URL",
    "KUSHIM_DATABASE_URL",
    "KUSHIM_DECLARE_TOPOLOGY",
    "KUSHIM_ACCOUNTS_FILE",
    "KUSHIM_AWS_SECRET_ID",
}
"""Settings a container may set for itself (its broker user, database, AWS access); every other KUSHIM_ setting is
the same in every Kushim container."""
BOTOCORE_ONLY = {"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"}
"""AWS variables botocore reads itself (not Settings)."""
VARIABLE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|(?<!\$)\$([A-Za-z_][A-Za-z0-9_]*)")
"""Compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME:+alt}, $NAME."""


# --- helpers ---------------------------------------------------------------------------------------------------------


@functools.cache
def compose() -> dict[str, Any]:
    data = YAML(typ="safe", pure=True).load(COMPOSE.read_text())  # merge keys (<<) resolved
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def kushim_services() -> dict[str, dict[str, Any]]:
    """The containers of our image: the five services and the one-shot jobs."""
    return {name: spec for name, spec in services().items() if spec.get("image") == KUSHIM_IMAGE}


def long_running() -> dict[str, dict[str, Any]]:
    return {name: spec for name, spec in kushim_services().items() if name not in ONE_SHOTS}


def environment(spec: dict[str, Any]) -> dict[str, Any]:
    env = spec.get("environment", {})
    assert isinstance(env, dict), "write `environment` as a mapping"
    return env


def setting_variables() -> set[str]:
    """Every environment variable Settings reads: KUSHIM_<FIELD> or the field's alias (AWS_REGION, ...)."""
    return {variable for variables in setting_env_names().values() for variable in variables}


def strings(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def referenced_variables() -> set[str]:
    """Variables compose reads: interpolated (${X}, ${X:-d}, ${X:?e}) and passed through (`X:` without a value)."""
    names: set[str] = set()
    for text in strings(compose()):
        names.update(match.group(1) or match.group(4) for match in VARIABLE.finditer(text))
    for spec in services().values():
        names.update(key for key, value in environment(spec).items() if value is None)
    return names


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's interpolation, as far as docker-compose.yml uses it."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1) or match.group(4), match.group(2) or "", match.group(3)
        value = env.get(name)
        present = bool(value) if op.startswith(":") else value is not None  # ":" also treats empty as unset
        if op.endswith("-"):
            return value if present and value is not None else arg
        if op.endswith("?"):
            if not present:
                raise KeyError(f"{name} is required: {arg}")
            return value or ""
        if op.endswith("+"):
            return arg if present else ""
        return value or ""

    return VARIABLE.sub(replace, text)


def env_file(path: Path) -> tuple[dict[str, str], set[str]]:
    """(variables set, variables only documented in a comment `# NAME=...`)."""
    assigned: dict[str, str] = {}
    documented: set[str] = set()
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"([A-Z][A-Z0-9_]*)=(.*)", line):
            assigned[match.group(1)] = match.group(2)
        elif match := re.match(r"# ?([A-Z][A-Z0-9_]*)=", line):
            documented.add(match.group(1))
    return assigned, documented


def nats_users() -> dict[str, str]:
    """user -> the environment variable holding its password, from deploy/nats/nats-server.conf."""
    text = NATS_CONF.read_text()
    pairs = re.findall(r"user:\s*(\w+)\s*\n\s*password:\s*\$(\w+)", text)
    assert pairs, "no users found in the nats-server configuration"
    return dict(pairs)


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def dockerfile_stages() -> list[list[Instruction]]:
    """The Dockerfile's instructions, stage by stage (continuations joined, comments dropped)."""
    logical: list[str] = []
    current = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continuation"
    stages: list[list[Instruction]] = []
    for entry in logical:
        keyword, _, args = entry.partition(" ")
        if keyword.upper() == "FROM":
            stages.append([])
        assert stages, f"{keyword} before the first FROM"
        stages[-1].append(Instruction(keyword.upper(), args.strip()))
    return stages


def resolve_command(argv: list[str]) -> tuple[list[str], Any, list[str]]:
    """(command path, the command it reaches, remaining arguments) in the `kushim` app, as typer builds it (a
    group's subcommands are in `.commands`; typer may bring its own copy of click, so no isinstance)."""
    node: Any = typer.main.get_command(app)
    path: list[str] = []
    rest = list(argv)
    while hasattr(node, "commands") and rest:
        sub = node.commands.get(rest[0])
        assert sub is not None, f"`kushim {' '.join(path + rest[:1])}` is not a command"
        node = sub
        path.append(rest.pop(0))
    return path, node, rest


def run_tool(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    tool = BIN / str(argv[0])
    assert tool.exists(), f"{tool.name} is missing: install the dev extra (pip install -e '.[dev]')"
    return subprocess.run([str(tool), *map(str, argv[1:])], capture_output=True, text=True, timeout=60, check=False)


# --- linters and schema ----------------------------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec() -> None:
    result = run_tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_hadolint() -> None:
    result = run_tool("hadolint", "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the image -------------------------------------------------------------------------------------------------------


def test_final_stage_runs_as_a_fixed_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    assert re.fullmatch(r"[0-9]+(:[0-9]+)?", users[-1]), "use a numeric uid (Kubernetes' runAsNonRoot checks it)"
    assert int(users[-1].split(":")[0]) != 0


def test_final_stage_holds_only_the_virtualenv() -> None:
    stages = dockerfile_stages()
    final = stages[-1]
    assert not [i for i in final if i.keyword == "RUN" and re.search(r"pip|apt-get|apk|gcc|build-essential", i.args)]
    copies = [i.args for i in final if i.keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copies
    env = " ".join(i.args for i in final if i.keyword == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", 'PATH="/opt/venv/bin:'):
        assert setting in env
    assert json.loads(next(i.args for i in final if i.keyword == "ENTRYPOINT")) == ["kushim"]
    # the port `kushim serve` listens on by default (/healthz, /readyz, /metrics), and the healthcheck's default
    assert [i.args for i in final if i.keyword == "EXPOSE"] == [str(DEFAULT_SERVE_PORT)]
    assert f'os.environ.get("KUSHIM_HTTP_PORT", "{DEFAULT_SERVE_PORT}")' in HEALTHCHECK.read_text()


def test_image_installs_no_demo_or_dev_extra() -> None:
    runs = [i.args for stage in dockerfile_stages() for i in stage if i.keyword == "RUN"]
    installs = [run for run in runs if "pip" in run and "install" in run]
    assert installs, "the builder installs nothing"
    for run in installs:
        assert not re.search(r"moto|pytest|\[(demo|dev)", run), run
        assert "--no-cache-dir" in run or "PIP_NO_CACHE_DIR" in DOCKERFILE.read_text()
    assert any("kushim-*.whl" in run for run in installs), "the project is installed from its wheel"


def test_both_stages_share_a_pinned_python_base() -> None:
    stages = dockerfile_stages()
    base = stages[0][0].args.split()
    pinned = re.fullmatch(r"python:3\.([0-9]+)\.[0-9]+-slim(-\w+)?", base[0])
    assert pinned, f"pin the base image to a patch release: python:3.X.Y-slim..., not {base[0]}"
    requires = re.fullmatch(r">=3\.([0-9]+)", tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"])
    assert requires, "requires-python changed form: update this test"
    assert int(pinned.group(1)) >= int(requires.group(1)), "the image's Python is older than requires-python"
    assert base[1:] == ["AS", "base"]
    assert [stage[0].args for stage in stages[1:]] == ["base AS builder", "base AS runtime"]


def test_runtime_dependencies_hold_nothing_of_the_demo_and_dev_extras() -> None:
    project = tomllib.loads(PYPROJECT.read_text())["project"]

    def name(requirement: str) -> str:
        found = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert found is not None
        return found.group(0).lower().replace("_", "-")

    runtime = {name(r) for r in project["dependencies"]}
    extras = {name(r) for group in ("demo", "dev") for r in project["optional-dependencies"][group]}
    assert {"moto", "pytest"} <= extras
    assert not runtime & extras, f"in the production image too: {sorted(runtime & extras)}"
    assert project["scripts"]["kushim"] == "services.cli.main:main"  # the image's ENTRYPOINT


def test_build_context_is_exactly_what_the_dockerfile_copies() -> None:
    patterns = [line for line in DOCKERIGNORE.read_text().splitlines() if line and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore starts by excluding everything"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources: set[str] = set()
    for stage in dockerfile_stages():
        for i in stage:
            if i.keyword == "COPY" and not i.args.startswith("--from"):
                sources.update(i.args.split()[:-1])
    assert sources == allowed
    for source in sources:
        assert (ROOT / source).exists(), source
    assert not allowed & {".venv", ".git", "tests", ".env", "deploy"}


def test_healthcheck_runs_the_copied_script() -> None:
    final = dockerfile_stages()[-1]
    health = next(i.args for i in final if i.keyword == "HEALTHCHECK")
    command = json.loads(health.split("CMD", 1)[1])
    copies = {i.args.split()[1]: i.args.split()[0] for i in final if i.keyword == "COPY" and "--from" not in i.args}
    assert command[0] == "python"
    assert copies[command[1]] == str(HEALTHCHECK.relative_to(ROOT))


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_script_follows_healthz(status: int, exit_code: int) -> None:
    handler = type("Handler", (_Health,), {"status": status})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        result = subprocess.run(
            [sys.executable, str(HEALTHCHECK)], env={"KUSHIM_HTTP_PORT": str(port)}, capture_output=True, timeout=30
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.returncode == exit_code, result.stderr


def test_healthcheck_script_fails_when_nothing_listens() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as server:
        port = server.server_address[1]  # bound, then closed: nothing listens there any more
    result = subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env={"KUSHIM_HTTP_PORT": str(port)}, capture_output=True, timeout=30
    )
    assert result.returncode == 1


# --- the compose stack: what the schema cannot see -------------------------------------------------------------------


def test_every_dependency_exists_with_a_condition_it_can_meet() -> None:
    every = services()
    for name, spec in every.items():
        for target, dependency in spec.get("depends_on", {}).items():
            assert target in every, f"{name} depends on {target}, which is not a service"
            condition = dependency["condition"]
            other = every[target]
            if condition == "service_healthy":
                check = other.get("healthcheck", {})
                assert check.get("test"), f"{target} has no healthcheck"
                assert not check.get("disable"), f"{target}'s healthcheck is disabled"
            if condition == "service_completed_successfully":
                assert other.get("restart") == "no", f"{target} is a job: it must not restart"
            if set(other.get("profiles", [])) - set(spec.get("profiles", [])):
                assert dependency.get("required") is False, f"{name} needs {target}, which only runs in a profile"


def test_every_command_is_a_kushim_command() -> None:
    targets: list[str] = []
    for name, spec in kushim_services().items():
        argv = spec["command"]
        path, command, rest = resolve_command(argv)
        assert not hasattr(command, "commands"), f"{name}: `kushim {' '.join(argv)}` names a group"
        command.make_context("kushim " + " ".join(path), list(rest))  # the arguments parse (arity, choices)
        if path == ["serve"]:
            targets.extend(rest)
        else:
            assert argv == ONE_SHOTS[name], name
    assert sorted(targets) == sorted(SERVICES), "compose runs each service of `kushim serve` exactly once"
    assert {name for name in long_running()} == set(SERVICES)


def test_every_kushim_variable_is_a_setting() -> None:
    known = setting_variables()
    for name, spec in kushim_services().items():
        for variable in environment(spec):
            if variable.startswith("KUSHIM_"):
                assert variable in known, f"{name}: {variable} is not a Kushim setting"
            elif variable.startswith("AWS_"):
                assert variable in known | BOTOCORE_ONLY, f"{name}: {variable} is read by nobody"
            else:
                pytest.fail(f"{name}: {variable} is neither a Kushim setting nor an AWS variable")


def test_each_container_connects_as_its_roles_nats_user() -> None:
    users = nats_users()
    for name, spec in kushim_services().items():
        url = environment(spec).get("KUSHIM_NATS_URL")
        if name not in NATS_USER_OF:
            assert url is None, f"{name} needs no broker"
            continue
        user = NATS_USER_OF[name]
        assert user in users
        assert url == f"nats://{user}:${{{users[user]}:?set it (see deploy/compose.env.example)}}@nats:4222"


def test_nats_server_gets_every_password_its_configuration_reads() -> None:
    nats_service = services()["nats"]
    env = environment(nats_service)
    for variable in nats_users().values():
        assert env.get(variable) == f"${{{variable}:?set it (see deploy/compose.env.example)}}"
    assert set(env) == set(nats_users().values())


def test_nats_runs_the_shipped_configuration_with_a_persistent_store() -> None:
    nats_service = services()["nats"]
    command = nats_service["command"]
    config = command[command.index("-c") + 1]
    assert f"./{NATS_CONF.relative_to(ROOT)}:{config}:ro" in nats_service["volumes"]
    store = command[command.index("-sd") + 1]
    volumes = [v.split(":") for v in nats_service["volumes"]]
    assert any(source in compose()["volumes"] and store.startswith(target) for source, target, *_ in volumes)
    assert re.fullmatch(r"nats:2\.[0-9]+\.[0-9]+-alpine", nats_service["image"]), "alpine: the healthcheck uses wget"
    assert "8222/healthz" in " ".join(nats_service["healthcheck"]["test"])


def test_services_only_look_the_topology_up_after_nats_init() -> None:
    for name, spec in long_running().items():
        assert environment(spec).get("KUSHIM_DECLARE_TOPOLOGY") == "false", name
        assert spec["depends_on"]["nats-init"] == {"condition": "service_completed_successfully"}, name
        assert spec["restart"] in ("unless-stopped", "always", "on-failure"), name
    assert "KUSHIM_DECLARE_TOPOLOGY" not in environment(services()["nats-init"])


def test_nats_init_declares_the_topology_the_services_verify() -> None:
    def shared_settings(name: str) -> dict[str, Any]:
        env = environment(services()[name])
        return {k: v for k, v in env.items() if k.startswith("KUSHIM_") and k not in PER_CONTAINER}

    expected = shared_settings("nats-init")
    for name in [*long_running(), "db-migrate"]:
        assert shared_settings(name) == expected, name
    assert {"KUSHIM_MAX_DELIVER", "KUSHIM_ACK_WAIT_SECONDS", "KUSHIM_DUPLICATE_WINDOW_SECONDS"} <= set(expected)


def test_evidence_reads_the_database_db_migrate_upgrades() -> None:
    every = services()
    url = environment(every["evidence"])["KUSHIM_DATABASE_URL"]
    assert environment(every["db-migrate"])["KUSHIM_DATABASE_URL"] == url
    assert urlsplit(interpolate(url, {"POSTGRES_PASSWORD": "pw"})).hostname == "postgres"
    assert url.startswith("postgresql+asyncpg://kushim:${POSTGRES_PASSWORD")
    assert environment(every["postgres"])["POSTGRES_USER"] == "kushim"
    assert every["evidence"]["depends_on"]["db-migrate"] == {"condition": "service_completed_successfully"}
    others = [name for name, spec in kushim_services().items() if "KUSHIM_DATABASE_URL" in environment(spec)]
    assert sorted(others) == ["db-migrate", "evidence"]


def test_images_are_pinned_and_mounts_exist() -> None:
    for name, spec in services().items():
        image = spec["image"]
        if image == KUSHIM_IMAGE:
            assert spec["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}, name
            continue
        tag = image.rpartition(":")[2]
        assert ":" in image, f"{name}: pin {image}"
        assert re.fullmatch(r"[0-9]+(\.[0-9]+)+(-.+)?", tag), f"{name}: pin {image} to a version"
        for volume in spec.get("volumes", []):
            source = interpolate(volume, {}).split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    for spec in kushim_services().values():
        for volume in spec.get("volumes", []):
            source, target, mode = interpolate(volume, {}).split(":")
            assert (ROOT / source).is_dir(), f"the default registry directory {source} is missing"
            assert (target, mode) == ("/etc/kushim", "ro")


def test_every_variable_is_documented_in_the_example_env_file() -> None:
    assigned, documented = env_file(ENV_EXAMPLE)
    demo, _ = env_file(DEMO_ENV)
    used = referenced_variables()
    assert used <= set(assigned) | documented, f"undocumented: {sorted(used - set(assigned) - documented)}"
    assert (set(assigned) | documented | set(demo)) <= used, "the env files name variables compose never reads"
    for variable in (*nats_users().values(), "POSTGRES_PASSWORD"):
        assert variable in assigned, f"{variable} must be set for `docker compose --env-file ... up` to work"
    for spec in services().values():  # every required variable is set: interpolation succeeds
        for text in strings(spec):
            interpolate(text, assigned)


async def test_example_passwords_work_with_the_shipped_nats_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assigned, _ = env_file(ENV_EXAMPLE)
    for variable in nats_users().values():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9._~-]*", assigned[variable]), f"{variable}: see the file's header"
        monkeypatch.setenv(variable, assigned[variable])
    server = start_nats(tmp_path / "nats", config=NATS_CONF)

    async def quiet(exc: Exception) -> None:
        pass

    async def connect(url: str) -> None:
        local = url.replace("@nats:4222", f"@127.0.0.1:{server.port}")
        nc = await nats.connect(
            local, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0, error_cb=quiet
        )
        await nc.close()

    try:
        urls = [
            environment(spec)["KUSHIM_NATS_URL"] for name, spec in kushim_services().items() if name in NATS_USER_OF
        ]
        assert len(urls) == len(NATS_USER_OF)
        for url in urls:
            await connect(interpolate(url, assigned))
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await connect("nats://admin:not-the-password@nats:4222")
    finally:
        server.stop()


def test_account_registry_example_is_valid() -> None:
    registry = parse_registry(ACCOUNTS_EXAMPLE.read_text(), str(ACCOUNTS_EXAMPLE))
    assert registry.accounts


# --- the demo profile ------------------------------------------------------------------------------------------------


def test_demo_profile_points_every_aws_client_at_the_seeded_moto() -> None:
    every = services()
    demo_only = {name for name, spec in every.items() if "demo" in spec.get("profiles", [])}
    assert demo_only == {"moto", "moto-seed"}
    for name in demo_only:
        assert every[name]["image"].startswith("motoserver/moto:")
    demo, _ = env_file(DEMO_ENV)
    endpoint = urlsplit(demo["AWS_ENDPOINT_URL"])
    assert endpoint.hostname == "moto"
    assert endpoint.port == 5000
    assert f"http://moto:{endpoint.port}" in every["moto-seed"]["entrypoint"]
    assert demo["AWS_S3_BUCKET_NAME"] == DEMO_EVIDENCE_BUCKET
    assert demo["AWS_REGION"] == DEMO_REGION
    assert demo["AWS_ACCESS_KEY_ID"] == demo["AWS_SECRET_ACCESS_KEY"] == "demo"
    for name, spec in long_running().items():
        assert {"AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(environment(spec)), name
    mounts = every["moto-seed"]["volumes"]
    assert f"./{SEED_SCRIPT.relative_to(ROOT)}:/seed/seed_moto.py:ro" in mounts
    assert f"./{DEMO_ACCOUNT.relative_to(ROOT)}:/seed/demo_account.py:ro" in mounts


def test_seed_script_seeds_moto_once(tmp_path: Path, moto_endpoint: str) -> None:
    seed = tmp_path / "seed"  # the layout of the moto-seed container: both files side by side
    seed.mkdir()
    shutil.copy(SEED_SCRIPT, seed / "seed_moto.py")
    shutil.copy(DEMO_ACCOUNT, seed / "demo_account.py")
    runs = [
        subprocess.run(
            [sys.executable, str(seed / "seed_moto.py"), moto_endpoint],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        for _ in range(2)
    ]
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    assert "seeded" in runs[0].stdout
    assert "nothing to do" in runs[1].stdout
    iam = boto3.client("iam", endpoint_url=moto_endpoint, region_name=DEMO_REGION)
    assert len(iam.list_users()["Users"]) == len(DEMO_USERS)
