"""Deployment artefacts (docker/, terraform/), checked without a Docker
engine or a `terraform` binary: HCL parses, checkov passes, every spec an
example deploys passes `tributary validate` against a registry holding its
schemas, the compose file is accepted by docker-compose, and the image's
runtime stage installs what the binary links."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import hcl2
import pytest
import yaml

from conftest import ROOT

TERRAFORM = ROOT / "terraform"
EXAMPLE = TERRAFORM / "examples" / "msk"
COMPOSE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

# `${NAME}` and `${NAME:-default}` references in a spec.
SPEC_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def required_variables(spec_text):
    """Variables a spec needs from its environment (those without a default)."""
    return {name for name, default in SPEC_VARIABLE.findall(spec_text) if not default}


def test_every_terraform_file_parses():
    files = sorted(TERRAFORM.rglob("*.tf"))
    assert len(files) >= 10
    for f in files:
        with open(f) as fh:
            parsed = hcl2.load(fh)
        assert parsed, f"{f} is empty"


def test_checkov_reports_no_failed_check_and_every_skip_is_justified():
    checkov = os.environ.get("CHECKOV")
    assert checkov and os.path.exists(checkov), "set CHECKOV to the checkov executable (scripts/test does)"
    result = subprocess.run(
        [checkov, "-d", str(TERRAFORM), "-o", "json", "--quiet", "--skip-download"],
        capture_output=True, text=True, timeout=600,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    summary = {k: sum(r["summary"][k] for r in reports) for k in ("passed", "failed", "skipped")}
    failed = [(c["check_id"], c["resource"], c["file_path"]) for r in reports for c in r["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] >= 100
    assert result.returncode == 0, result.stderr[-2000:]
    # A skip names its reason in the code, next to the resource.
    for f in TERRAFORM.rglob("*.tf"):
        for line in f.read_text().splitlines():
            if "checkov:skip=" in line:
                reason = line.split("checkov:skip=", 1)[1].split(":", 1)
                assert len(reason) == 2 and len(reason[1].strip()) > 20, f"{f}: unjustified skip: {line.strip()}"


def module_container_variables():
    """Environment variable names the module gives the Tributary container."""
    ecs = (TERRAFORM / "modules" / "tributary" / "ecs.tf").read_text()
    plain = set(re.findall(r"^\s+([A-Z][A-Z0-9_]+)\s+=", ecs, re.M))
    secrets = set(re.findall(r'name = "([A-Z][A-Z0-9_]+)", valueFrom', ecs))
    return plain | secrets


def test_module_provides_every_variable_the_example_specs_need():
    provided = module_container_variables()
    assert {"KAFKA_BOOTSTRAP_SERVERS", "SCHEMA_REGISTRY_URL", "TRIBUTARY_LAKE", "KAFKA_SASL_PASSWORD"} <= provided
    specs = sorted((EXAMPLE / "specs").glob("*.yaml"))
    assert len(specs) == 2
    for spec in specs:
        text = spec.read_text()
        missing = required_variables(text) - provided
        assert not missing, f"{spec.name} needs {sorted(missing)}, which the module does not set"
        auth_env = yaml.safe_load(text)["source"]["schema_registry"].get("basic_auth_env")
        assert auth_env is None or auth_env in provided


def register_example_schemas(dev_stack, spec_dir, schema_dir):
    for spec in sorted(spec_dir.glob("*.yaml")):
        topic = yaml.safe_load(re.sub(SPEC_VARIABLE, "x", spec.read_text()))["source"]["kafka"]["topic"]
        schema = json.loads((schema_dir / f"{topic}.avsc").read_text())
        dev_stack.register(f"{topic}-value", schema)


def validate_online(binary, dev_stack, target, env):
    result = subprocess.run(
        [binary, "validate", str(target)],
        env=dict(os.environ, SCHEMA_REGISTRY_URL=dev_stack.registry, KAFKA_BOOTSTRAP_SERVERS=dev_stack.bootstrap, **env),
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # The registry answered for every spec, so column references were checked too.
    assert "not checked" not in result.stderr, result.stderr
    return result.stdout.splitlines()


def test_example_specs_validate_against_their_schemas(binary, dev_stack):
    register_example_schemas(dev_stack, EXAMPLE / "specs", EXAMPLE / "schemas")
    lines = validate_online(binary, dev_stack, EXAMPLE / "specs", {
        "TRIBUTARY_LAKE": "s3://example-lake/lake",
        "TRIBUTARY_CHECKPOINTS": "s3://example-lake/checkpoints",
        "KAFKA_SASL_USERNAME": "tributary",
        "KAFKA_SASL_PASSWORD": "not-a-secret",
        "SCHEMA_REGISTRY_BASIC_AUTH": "key:not-a-secret",
    })
    assert lines == [f"{s}: ok" for s in sorted((EXAMPLE / "specs").glob("*.yaml"))]


def compose():
    return yaml.safe_load(COMPOSE.read_text())


def test_docker_compose_accepts_the_compose_file():
    tool = shutil.which("docker-compose")
    assert tool, "docker-compose (Debian package) is not installed; scripts/test installs it"
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_compose_stack_is_pinned_and_runs_the_example_specs_on_minio(binary, dev_stack):
    services = compose()["services"]
    assert {"kafka", "schema-registry", "minio", "minio-init", "generator", "tributary"} <= set(services)
    for name, service in services.items():
        image = service["image"]
        assert re.search(r":[\w.-]+$", image) and not image.endswith(":latest"), f"{name}: image {image} is not pinned"
    kafka_env = services["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"], "the broker runs in KRaft mode"

    tributary = services["tributary"]
    env = {k: str(v) for k, v in tributary["environment"].items()}
    mounted = {v.split(":")[1]: v.split(":")[0] for v in tributary["volumes"] if v.startswith(".")}
    spec_dir = (COMPOSE.parent / mounted["/etc/tributary/specs"]).resolve()
    assert spec_dir == ROOT / "table-specs"
    # Tables go to the bucket minio-init creates.
    bucket = re.search(r"mc mb --ignore-existing \w+/([\w-]+)", " ".join(services["minio-init"]["command"])).group(1)
    assert env["TRIBUTARY_LAKE"] == f"s3://{bucket}"
    assert env["TRIBUTARY_CHECKPOINTS"].startswith(f"s3://{bucket}/")
    assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
    # The generator feeds the topic the specs read.
    generator = services["generator"]["command"]
    topic = generator[generator.index("--topic") + 1]
    specs = sorted(spec_dir.glob("*.yaml"))
    assert topic in {yaml.safe_load(re.sub(SPEC_VARIABLE, "x", s.read_text()))["source"]["kafka"]["topic"] for s in specs}
    assert generator[:2] == ["demo", "--produce-only"]

    # The specs validate with the stack's environment (registry and broker
    # swapped for the test's), their schema registered as the generator does.
    generator_schema = (EXAMPLE / "schemas" / "clicks.avsc")
    dev_stack.register(f"{topic}-value", json.loads(generator_schema.read_text()))
    # Topics the generator does not feed have their schemas beside the specs.
    for schema in sorted((spec_dir / "schemas").glob("*.avsc")):
        dev_stack.register(f"{schema.stem}-value", json.loads(schema.read_text()))
    env.pop("SCHEMA_REGISTRY_URL")
    env.pop("KAFKA_BOOTSTRAP_SERVERS")
    lines = validate_online(binary, dev_stack, spec_dir, env)
    assert lines == [f"{s}: ok" for s in specs]


def dockerfile_stages():
    stages, current = [], None
    for line in DOCKERFILE.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "FROM":
            current = {"from": rest.split()[0], "lines": []}
            stages.append(current)
        else:
            current["lines"].append((instruction.upper(), rest))
    return stages


def test_image_runtime_stage_has_what_the_binary_links_and_no_toolchain(binary):
    builder, runtime = dockerfile_stages()
    # The builder's toolchain is the workspace's rust-version, on the runtime's Debian release.
    rust_version = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["rust-version"]
    assert builder["from"] == f"rust:{rust_version}-slim-bookworm"
    assert runtime["from"] == "debian:bookworm-slim"

    installed = set()
    for instruction, rest in runtime["lines"]:
        if instruction == "RUN" and "apt-get install" in rest:
            install = rest.split("apt-get install", 1)[1].split("&&")[0]
            installed |= {w for w in install.split() if not w.startswith("-")}
    assert not installed & {"cargo", "rustc", "build-essential", "gcc", "libssl-dev"}
    # Every shared library of the built binary comes from an installed
    # package, or from libc6 / libgcc-s1, which every Debian image has.
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libraries = re.findall(r"=> (/\S+)", ldd)
    assert libraries
    for library in libraries:
        owner = subprocess.run(["dpkg", "-S", os.path.realpath(library)], capture_output=True, text=True)
        if owner.returncode != 0:
            owner = subprocess.run(["dpkg", "-S", library], capture_output=True, text=True)
        package = owner.stdout.split(":")[0]
        assert package in installed | {"libc6", "libgcc-s1"}, f"{library} comes from {package}, not installed in the runtime stage"

    instructions = dict(runtime["lines"])
    assert instructions["USER"].split(":")[0] not in ("0", "root")
    assert "tributary" in instructions["HEALTHCHECK"] and "healthcheck" in instructions["HEALTHCHECK"]
    assert json.loads(instructions["CMD"])[:3] == ["run", "--spec", "/etc/tributary/specs"]

    # The build context the .dockerignore lets through holds every workspace member.
    allowed = [l[1:].rstrip("/") for l in (ROOT / ".dockerignore").read_text().splitlines() if l.startswith("!")]
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    for member in members + ["Cargo.toml", "Cargo.lock"]:
        assert any(member == a or member.startswith(a + "/") for a in allowed), f"{member} is not in the build context"


def test_deployment_doc_documents_every_module_input_and_no_other():
    text = (ROOT / "docs" / "deployment.md").read_text()
    for artefact in ("docker/Dockerfile", "docker/compose.yaml", "terraform/modules/tributary", "terraform/examples/msk"):
        assert artefact in text and (ROOT / artefact).exists()
    with open(TERRAFORM / "modules" / "tributary" / "variables.tf") as fh:
        variables = {name.strip('"'): body for block in hcl2.load(fh)["variable"] for name, body in block.items()}
    section = text.split("### The module's inputs", 1)[1].split("\n### ", 1)[0]
    documented = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z_]+)`", line.split("|")[1]))
    assert documented == set(variables), (sorted(set(variables) - documented), sorted(documented - set(variables)))
    required = section.split("Optional:", 1)[0]
    for name, body in variables.items():
        assert (f"| `{name}`" in required or f", `{name}`" in required) == ("default" not in body), f"{name}: required or not?"
