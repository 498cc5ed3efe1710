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
    # package, or from libc6 / libgcc-s1, which every Debian image has. The
    # one exception is the prebuilt RocksDB that the scripts' dev builds link
    # (scripts/lib.sh, prebuilt_rocksdb): the image's release build compiles
    # RocksDB into the binary. What that library links still counts.
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libraries = re.findall(r"=> (/\S+)", ldd)
    prebuilt = os.environ.get("ROCKSDB_LIB_DIR")
    if prebuilt:
        rocksdb = os.path.realpath(os.path.join(prebuilt, "librocksdb.so"))
        assert rocksdb in map(os.path.realpath, libraries), ldd
        libraries = [library for library in libraries if os.path.realpath(library) != rocksdb]
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


# --- The task roles (terraform/modules/tributary/iam.tf) -------------------------
#
# No `terraform` here: these read the module's HCL and check the statements
# as written, evaluating the IAM resource patterns the way IAM does.

MODULE = TERRAFORM / "modules" / "tributary"
LAKE_ARN = "arn:aws:s3:::example-lake"


def module_file(name):
    with open(MODULE / name) as fh:
        return hcl2.load(fh)


def unquote(value):
    """python-hcl2 keeps the quotes of a string literal."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def blocks(parsed, kind, block_type):
    """{name: body} of the `kind` ("resource", "data") blocks of one type."""
    found = {}
    for block in parsed.get(kind, []):
        for t, named in block.items():
            if unquote(t) == block_type:
                found.update({unquote(name): body for name, body in named.items()})
    return found


def module_locals(name):
    merged = {}
    for block in module_file(name).get("locals", []):
        merged.update(block)
    return merged


def task_policy():
    """The task role's policy document, and its statements as (statement,
    for_each of the dynamic block holding it, or None when always there)."""
    doc = blocks(module_file("iam.tf"), "data", "aws_iam_policy_document")["task"]
    statements = [(s, None) for s in doc.get("statement", [])]
    for dynamic in doc.get("dynamic", []):
        for label, body in dynamic.items():
            if unquote(label) == "statement":
                statements += [(c, body["for_each"]) for c in body["content"]]
    return doc, statements


def task_statement(sid):
    found = [(s, f) for s, f in task_policy()[1] if unquote(s.get("sid")) == sid]
    assert len(found) == 1, f"one statement {sid} in the task policy"
    return found[0]


def resource_arns(statement):
    assert isinstance(statement["resources"], list), statement["resources"]
    return [unquote(r).replace("${aws_s3_bucket.lake.arn}", LAKE_ARN) for r in statement["resources"]]


def iam_matches(patterns, key):
    """Whether an object ARN matches one of the patterns: IAM's `*` is any run
    of characters, `/` included, and `?` any one character."""
    arn = f"{LAKE_ARN}/{key}"
    for pattern in patterns:
        regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
        if re.fullmatch(regex, arn):
            return True
    return False


# Keys Tributary writes with the example module (lake_prefix "lake",
# checkpoint_prefix "checkpoints").
DELTA_COMMITS = [
    "lake/clicks/_delta_log/00000000000000000000.json",
    "lake/clicks_dead_letters/_delta_log/00000000000000000012.json",
    "lake/sales/eu/orders/_delta_log/00000000000000000003.json",
    "lake/_delta_log/00000000000000000001.json",
]
# Overwritten with plain PUTs by delta-kernel (create_checkpoint).
DELTA_LOG_CHECKPOINTS = [
    "lake/clicks/_delta_log/_last_checkpoint",
    "lake/clicks/_delta_log/00000000000000000010.checkpoint.parquet",
]
DATA_FILES = ["lake/clicks/date=2026-01-01/part-00000-3f2a-0.parquet"]
# Under the checkpoint prefix: a batch plan (put-if-absent when recorded, but
# OffsetLog::adopt overwrites it), an intent and a state snapshot manifest.
CHECKPOINT_OBJECTS = [
    "checkpoints/clicks/offsets/0/00000000000000000003.json",
    "checkpoints/clicks/offsets/0/00000000000000000003.files/6f1c2d0e-5b7a-4c1e-9d55-0a4e2b1f7c3d",
    "checkpoints/clicks/state/0/snapshots/00000000000000000010.json",
]


def test_task_role_writes_delta_commits_only_with_if_none_match():
    deny, for_each = task_statement("DeltaCommitsOnlyIfAbsent")
    assert for_each is None, "every task role has it, whatever its specs"
    assert unquote(deny["effect"]) == "Deny"
    assert [unquote(a) for a in deny["actions"]] == ["s3:PutObject"]
    # AWS's pattern: deny the request that carries no If-None-Match header.
    [condition] = deny["condition"]
    assert (unquote(condition["test"]), unquote(condition["variable"]), [unquote(v) for v in condition["values"]]) == (
        "Null", "s3:if-none-match", ["true"])
    arns = resource_arns(deny)
    for key in DELTA_COMMITS:
        assert iam_matches(arns, key), f"a commit escapes the rule: {key}"
    # What the product writes unconditionally stays writable.
    for key in DELTA_LOG_CHECKPOINTS + DATA_FILES + CHECKPOINT_OBJECTS:
        assert not iam_matches(arns, key), f"{key} is written without If-None-Match, and would be refused"

    # The deny is what decides: the role may otherwise put objects there.
    allow, _ = task_statement("ReadWriteTablesAndCheckpoints")
    assert unquote(allow.get("effect", '"Allow"')) == "Allow"
    assert {"s3:PutObject", "s3:DeleteObject"} <= {unquote(a) for a in allow["actions"]}

    # The product as the rule assumes it: a batch plan can be overwritten
    # (so the checkpoint prefix gets no conditional-write rule), and Delta
    # log checkpoints are written by deltalake's create_checkpoint.
    offset_log = (ROOT / "crates" / "engine" / "src" / "offset_log.rs").read_text()
    assert re.search(r"async fn adopt\b[\s\S]*?store\s*\.put\(&key", offset_log)
    rewrite = (ROOT / "connectors" / "delta" / "src" / "maintenance" / "rewrite.rs").read_text()
    assert "create_checkpoint(table, None)" in rewrite


def test_task_role_deletes_delta_log_files_only_when_its_specs_clean_them_up():
    keep, for_each = task_statement("KeepDeltaLog")
    assert unquote(keep["effect"]) == "Deny"
    assert [unquote(a) for a in keep["actions"]] == ["s3:DeleteObject"]
    # Present exactly when no spec of the role's set runs the log clean-up.
    assert for_each == "${each.value.cleans_delta_log ? [] : [1]}"
    arns = resource_arns(keep)
    for key in DELTA_COMMITS + DELTA_LOG_CHECKPOINTS:
        assert iam_matches(arns, key), key
    # Data files (vacuum, failed attempts) and the checkpoint location's
    # retention are not Delta log files.
    for key in DATA_FILES + CHECKPOINT_OBJECTS:
        assert not iam_matches(arns, key), key

    task_access = module_locals("iam.tf")["task_access"]
    assert "cleans_delta_log = anytrue([for k in members : local.spec_cleans_delta_log[k]])" in task_access
    cleans = module_locals("specs.tf")["spec_cleans_delta_log"]
    assert "try(doc.compaction.enabled, true) == false" in cleans
    assert "try(doc.trigger.available_now, false) == true" in cleans
    # ... which is when `tributary run` starts the compaction worker, and
    # every pass of the worker deletes expired log files.
    main = (ROOT / "crates" / "service" / "src" / "main.rs").read_text()
    assert re.search(r"if spec\.compaction\.enabled && !spec\.trigger\.available_now \{[^}]*run_worker\(", main)
    worker = (ROOT / "crates" / "compaction" / "src" / "worker.rs").read_text()
    assert "sink.cleanup_expired_logs(policy.log_retention.0)" in worker.split("pub async fn compact_once", 1)[1]

    # The example's specs compact, so their role may clean up their logs.
    for spec in sorted((EXAMPLE / "specs").glob("*.yaml")):
        doc = yaml.safe_load(spec.read_text())
        assert doc.get("compaction", {}).get("enabled", True) is True, spec.name


def test_isolate_roles_gives_each_spec_its_own_role_task_definition_and_service():
    with open(MODULE / "variables.tf") as fh:
        variables = {unquote(n): b for block in hcl2.load(fh)["variable"] for n, b in block.items()}
    assert variables["isolate_roles"]["type"] in ("bool", "${bool}")
    assert variables["isolate_roles"]["default"] is False

    # Pipeline sets: one per spec, keyed by its name, or one (`all`).
    sets = module_locals("specs.tf")["pipeline_sets"]
    assert re.fullmatch(
        r"\$\{var\.isolate_roles \? tomap\(\{for k in keys\(var\.specs\) : k => tolist\(\[k\]\)\}\)"
        r" : tomap\(\{all = sort\(keys\(var\.specs\)\)\}\)\}", sets), sets

    iam = module_file("iam.tf")
    ecs = module_file("ecs.tf")
    role = blocks(iam, "resource", "aws_iam_role")["task"]
    assert role["for_each"] == "${local.pipeline_sets}"
    task_access = module_locals("iam.tf")["task_access"]
    assert task_access.startswith("${{for set, members in local.pipeline_sets : set => {")
    # Isolated, a set's role reaches only its specs' keys and spec objects.
    assert ("prefixes = var.isolate_roles ? distinct(flatten([for k in members : local.spec_keys[k]]))"
            " : [var.lake_prefix, var.checkpoint_prefix]") in task_access
    assert 'spec_objects = var.isolate_roles ? [for k in members : "${local.spec_prefix}/${k}.yaml"]' in task_access
    assert "spec_list = var.isolate_roles ? [] :" in task_access

    doc, _ = task_policy()
    assert doc["for_each"] == "${local.task_access}"
    read_write, _ = task_statement("ReadWriteTablesAndCheckpoints")
    assert read_write["resources"] == '${[for p in each.value.prefixes : "${aws_s3_bucket.lake.arn}/${p}/*"]}'
    listing, _ = task_statement("ListLakePrefixes")
    assert 'for p in each.value.prefixes : ["${p}/*", p]' in listing["condition"][0]["values"]
    read_specs, _ = task_statement("ReadSpecs")
    assert read_specs["resources"] == '${[for o in each.value.spec_objects : "${aws_s3_bucket.lake.arn}/${o}"]}'

    policy = blocks(iam, "resource", "aws_iam_role_policy")["task"]
    assert policy["for_each"] == "${local.task_access}"
    assert policy["role"] == "${aws_iam_role.task[each.key].id}"
    assert policy["policy"] == "${data.aws_iam_policy_document.task[each.key].json}"
    # A spec whose locations the role cannot be confined to fails the plan.
    [precondition] = policy["lifecycle"][0]["precondition"]
    assert precondition["condition"] == "${length(each.value.misplaced) == 0}"

    # What a spec touches: its table, dead-letter table (default
    # <table>_dead_letters), late_rows table and checkpoint, as keys under
    # the lake or checkpoint prefix in characters that are no IAM wildcard.
    specs = module_locals("specs.tf")
    raw = specs["spec_raw_locations"]
    for field in ("doc.table.uri", "doc.dead_letters.table", '"${tostring(doc.table.uri)}_dead_letters"',
                  "doc.late_rows", "doc.checkpoint.location"):
        assert field in raw, field
    assert "TRIBUTARY_LAKE" in specs["lake_reference"] and "TRIBUTARY_CHECKPOINTS" in specs["checkpoint_reference"]
    assert 'startswith(u, "${local.lake_uri}/") || startswith(u, "${local.checkpoint_uri}/")' in specs["spec_keys"]
    assert 'regex("^[A-Za-z0-9_.=/-]+$"' in specs["spec_keys"]

    # One task definition and one service per set, each with its set's role.
    task = blocks(ecs, "resource", "aws_ecs_task_definition")["tributary"]
    assert task["for_each"] == "${local.pipeline_sets}"
    assert task["task_role_arn"] == "${aws_iam_role.task[each.key].arn}"
    assert "local.s3_spec_loader[each.key]" in task["container_definitions"]
    assert "local.tributary_container[each.key]" in task["container_definitions"]
    service = blocks(ecs, "resource", "aws_ecs_service")["tributary"]
    assert service["for_each"] == "${local.pipeline_sets}"
    assert service["task_definition"] == "${aws_ecs_task_definition.tributary[each.key].arn}"
    assert unquote(service["name"]) == "tributary-${var.name}${local.set_suffix[each.key]}"
    ecs_locals = module_locals("ecs.tf")
    assert ecs_locals["set_suffix"] == '${{for set in keys(local.pipeline_sets) : set => var.isolate_roles ? "-${set}" : ""}}'
    # An isolated task loads only its own spec; its digest covers only it.
    assert "${members[0]}.yaml" in str(ecs_locals["s3_spec_loader"])
    assert "sha256(jsonencode({for k in members : k => var.specs[k]}))" in str(ecs_locals["environment"])

    # Without isolate_roles the existing role, policy, task definition and
    # service become the `all` set's in place.
    moved = {(m["from"], m["to"]) for f in ("iam.tf", "ecs.tf") for m in module_file(f).get("moved", [])}
    assert moved == {
        ("${aws_iam_role.task}", '${aws_iam_role.task["all"]}'),
        ("${aws_iam_role_policy.task}", '${aws_iam_role_policy.task["all"]}'),
        ("${aws_ecs_task_definition.tributary}", '${aws_ecs_task_definition.tributary["all"]}'),
        ("${aws_ecs_service.tributary}", '${aws_ecs_service.tributary["all"]}'),
    }


def test_example_specs_could_run_with_isolated_roles():
    """Each example spec's locations are what isolate_roles can confine a role
    to: ${TRIBUTARY_LAKE}/<key> tables and a ${TRIBUTARY_CHECKPOINTS}/<key>
    checkpoint, keys in the characters the module accepts."""
    key = re.compile(r"[A-Za-z0-9_.=/-]+")
    for spec in sorted((EXAMPLE / "specs").glob("*.yaml")):
        doc = yaml.safe_load(spec.read_text())
        table = doc["table"]["uri"]
        tables = [table, doc.get("dead_letters", {}).get("table", f"{table}_dead_letters")]
        if doc.get("late_rows", "drop") != "drop":
            tables.append(doc["late_rows"])
        for uri in tables:
            assert uri.startswith("${TRIBUTARY_LAKE}/") and key.fullmatch(uri.split("}/", 1)[1]), (spec.name, uri)
        checkpoint = doc["checkpoint"]["location"]
        assert checkpoint.startswith("${TRIBUTARY_CHECKPOINTS}/") and key.fullmatch(checkpoint.split("}/", 1)[1])
