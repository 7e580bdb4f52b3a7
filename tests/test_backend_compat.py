"""The minimum KFP backend that can run our compiled pipelines, checked: every pipeline in ``PIPELINES``, compiled
now, parses into the PipelineSpec, PipelineDeploymentConfig, PlatformSpec and KubernetesExecutorConfig messages of
backend ``MINIMUM_BACKEND`` with unknown fields rejected (their definitions are read from that release's wheels,
nothing is installed: see tests/support/kfp_protos.py), and not into those of the release before it.

Why 2.15.0 (first backend release with each field we use, from kubeflow/pipelines CHANGELOG.md and the driver):
secretAsEnv.optional 2.15.0 (#12216); secretNameParameter, nodeSelectorJson, tolerationJson 2.5.0 (#11770, and
toleration lists 90909fc); resource limits and accelerator count/type from parameters 2.4.0 (#11501); task retry
policy 2.4.1 (#11673, cherry-picked in #11716); emptyDirMounts 2.3.0 (#10913); activeDeadlineSeconds 2.1.0 (#10481);
dsl.If, ExitHandler and nested pipelines 2.0.0. A proto check proves what the server parses, not what its driver
does with it: the driver evidence above is from reading the backend code at each tag.
"""

# No `from __future__ import annotations`: kfp reads the probe components' annotations as types.
import pytest
import yaml
from google.protobuf import json_format
from support.kfp_protos import (
    DEFAULT_CACHE_DIR,
    KUBERNETES_EXECUTOR_CONFIG,
    PIPELINE_SPEC,
    installed_release,
    load_release,
)

from kfp_mlops.pipelines import PIPELINES

pytestmark = pytest.mark.timeout(300)  # the first run downloads four wheels of about 10-25 KB each

MINIMUM_BACKEND = "2.15.0"
PREVIOUS_RELEASE = "2.14.6"  # the last 2.14.x wheels: the protos of backend 2.14.x


@pytest.fixture(scope="module")
def minimum():
    return load_release(MINIMUM_BACKEND)


@pytest.fixture(scope="module")
def installed():
    """The protos the installed SDK compiles with (kfp-pipeline-spec, kfp-kubernetes), for contrast."""
    return installed_release()


def test_every_pipeline_parses_as_the_minimum_backend_reads_it(compiled_documents, minimum):
    assert sorted(compiled_documents) == sorted(PIPELINES)
    for name, documents in compiled_documents.items():
        try:
            minimum.check_compiled_pipeline(documents)
        except json_format.ParseError as exc:
            pytest.fail(f"{name}.yaml needs a backend newer than {MINIMUM_BACKEND}: {exc}")


def test_the_release_before_the_minimum_rejects_the_training_pipeline(compiled_documents):
    """The stated minimum is tight: backend 2.14 does not know secretAsEnv.optional (and would fail the run)."""
    previous = load_release(PREVIOUS_RELEASE)
    assert not previous.has_field("kfp_kubernetes.SecretAsEnv", "optional")

    with pytest.raises(json_format.ParseError, match=r'SecretAsEnv" has no field named "optional"'):
        previous.check_compiled_pipeline(compiled_documents["training"])


@pytest.mark.parametrize(
    ("where", "field", "value"),
    [
        # typing.Literal parameters compile to ParameterSpec.literals (kfp-pipeline-spec 2.16+)
        (("root", "inputDefinitions", "parameters", "gpu_type"), "literals", ["nvidia.com/gpu", "amd.com/gpu"]),
        # kubernetes.set_security_context (kfp-kubernetes 2.16+)
        (
            ("platforms", "kubernetes", "deploymentSpec", "executors", "exec-train-model"),
            "securityContext",
            {"runAsNonRoot": True},
        ),
    ],
)
def test_a_field_newer_than_the_minimum_is_rejected(compiled_documents, minimum, installed, where, field, value):
    documents = [yaml.safe_load(yaml.safe_dump(d)) for d in compiled_documents["training"]]
    document = documents[0] if where[0] == "root" else documents[1]
    target = document
    for key in where:
        target = target[key]
    target[field] = value

    installed.check_compiled_pipeline(documents)  # the SDK we compile with would write it
    with pytest.raises(json_format.ParseError, match=f'has no field named "{field}"'):
        minimum.check_compiled_pipeline(documents)


def test_features_planned_next_parse_as_the_minimum_backend(tmp_path, minimum):
    """/dev/shm as a memory emptyDir, a pod deadline, ExitHandler, a nested pipeline and dsl.If, compiled by the
    installed SDK: adding them to a pipeline keeps the minimum."""
    from kfp import compiler, dsl, kubernetes

    @dsl.component(base_image="python:3.11-slim")
    def step(message: str) -> bool:
        return bool(message)

    @dsl.pipeline(name="inner")
    def inner(message: str) -> bool:
        return step(message=message).output

    @dsl.pipeline(name="probe")
    def probe(message: str = "hi", gpus: int = 1, cpu: str = "2", secret: str = "s", tolerations: list = []):  # noqa: B006
        cleanup = step(message="cleanup")
        with dsl.ExitHandler(cleanup):
            task = step(message=message)
            task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus).set_cpu_limit(cpu)
            kubernetes.empty_dir_mount(task, volume_name="shm", mount_path="/dev/shm", medium="Memory")
            kubernetes.set_timeout(task, 3600)
            kubernetes.use_secret_as_env(task, secret, {"KEY": "KEY"}, optional=True)
            kubernetes.add_toleration_json(task, tolerations)
            with dsl.If(task.output == True):  # noqa: E712 - a KFP condition
                inner(message=message)

    path = tmp_path / "probe.yaml"
    compiler.Compiler().compile(probe, str(path))
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d]

    minimum.check_compiled_pipeline(documents)
    (config,) = [
        c
        for c in documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()
        if "emptyDirMounts" in c
    ]
    assert config["emptyDirMounts"] == [{"volumeName": "shm", "mountPath": "/dev/shm", "medium": "Memory"}]
    assert int(config["activeDeadlineSeconds"]) == 3600
    spec = minimum.parse(documents[0], PIPELINE_SPEC)
    assert {"comp-exit-handler-1", "comp-condition-2", "comp-inner"} <= set(spec.components)
    assert minimum.message_class(KUBERNETES_EXECUTOR_CONFIG).DESCRIPTOR.fields_by_name["empty_dir_mounts"]


def test_descriptors_are_read_from_the_downloaded_wheels_not_the_installed_modules(minimum, installed):
    assert minimum.version == MINIMUM_BACKEND
    assert not minimum.has_field("ml_pipelines.ComponentInputsSpec.ParameterSpec", "literals")
    assert installed.has_field("ml_pipelines.ComponentInputsSpec.ParameterSpec", "literals")
    wheels = sorted(p.name for p in DEFAULT_CACHE_DIR.glob(f"*-{MINIMUM_BACKEND}-*.whl"))
    assert wheels == [
        f"kfp_kubernetes-{MINIMUM_BACKEND}-py3-none-any.whl",
        f"kfp_pipeline_spec-{MINIMUM_BACKEND}-py3-none-any.whl",
    ]
