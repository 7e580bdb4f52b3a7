"""Path safety of the deploy step (issue 15): model names are one safe folder name, checked at config time, and
every delete the deploy step does stays inside ``<repo>/<name>/`` or a staging folder
``<repo>/<name>-candidate-<8 hex>/``, on a local repository and on S3 (real SeaweedFS). No Triton: the deletes are
the repository's."""

from __future__ import annotations

import re

import pytest

from kfp_mlops.components.deploy.repository import Repository, UnsafeDeleteError
from kfp_mlops.components.shared import storage
from kfp_mlops.components.shared.config import DeployConfig, parse_config
from kfp_mlops.components.shared.errors import ConfigError

VALID = {
    "data": {"source": "data/"},
    "schema": {"entity": "id", "timestamp": "ts", "label": "y"},
}


@pytest.mark.parametrize("name", [".", "..", "-x", "_x", ".hidden", "a/b", "a\\b", "", "a b"])
def test_an_unsafe_model_name_is_refused_at_config_time_naming_the_key_and_value(name):
    expected = rf"deploy\.model_name: Value error, deploy\.model_name {re.escape(repr(name))} is not a safe model name"
    with pytest.raises(ConfigError, match=expected):
        parse_config({**VALID, "deploy": {"model_name": name}})


def test_a_model_name_that_looks_like_a_staging_name_is_refused():
    """Deploying ``churn`` removes leftover ``churn-candidate-<8 hex>`` folders: no model may be named so."""
    with pytest.raises(ConfigError, match=r"'churn-candidate-0123abcd' ends like a deployment's staging name"):
        parse_config({**VALID, "deploy": {"model_name": "churn-candidate-0123abcd"}})


def test_each_deployment_stages_under_its_own_name_and_finds_the_others(tmp_path):
    root = _local_repository(tmp_path)
    first, second = Repository(str(root), "churn"), Repository(str(root), "churn")
    assert first.candidate != second.candidate
    assert re.fullmatch(r"churn-candidate-[0-9a-f]{8}", first.candidate)
    (root / first.candidate / "1").mkdir(parents=True)
    (root / "churn-candidate").mkdir()  # not a staging name: left alone
    assert second.staged() == sorted(["churn-candidate-0123abcd", first.candidate])


@pytest.mark.parametrize("name", ["churn", "churn.v2", "Churn_2-a", "7", "churn-candidate"])
def test_safe_model_names_pass(name):
    assert DeployConfig(model_name=name).model_name == name


@pytest.mark.parametrize("name", [".", ".."])
def test_a_repository_refuses_an_unsafe_name_even_without_the_config(tmp_path, name):
    with pytest.raises(ValueError, match=r"deploy\.model_name"):
        Repository(str(tmp_path), name)


def _local_repository(tmp_path):
    root = tmp_path / "repo"
    for relative in ("churn/1/model.onnx", "churn/config.pbtxt", "churn-candidate-0123abcd/1/model.onnx",
                     "other/1/model.onnx", "other/config.pbtxt", "churnx/1/model.onnx"):  # fmt: skip
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)
    (tmp_path / "outside.txt").write_text("keep")
    return root


@pytest.mark.parametrize(
    "relative",
    [".", "", "..", "other", "churn/../other", "churn/../../outside.txt", "churnx", "churn-candidate-0123abcd/../other",
     "churn-candidate", "churn-candidate-0123ABCD", "churn-candidate-0123abcd0", "/etc", "link"],
)  # fmt: skip
def test_a_local_delete_outside_the_model_folder_is_refused_and_the_rest_survives(tmp_path, relative):
    root = _local_repository(tmp_path)
    (root / "churn" / "link").symlink_to(root / "other")
    if relative == "link":
        relative = "churn/link/1"  # inside <name>/ by its text, in other/ once resolved
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(
        UnsafeDeleteError, match=r"refusing to delete .*outside .*churn/ and the staging folders churn-candidate-\*/"
    ):
        Repository(str(root), "churn").delete(relative)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_a_local_delete_inside_the_model_folders_deletes_only_that(tmp_path):
    root = _local_repository(tmp_path)
    repository = Repository(str(root), "churn")
    repository.delete("churn/1")
    repository.delete("churn-candidate-0123abcd")
    repository.delete("churn")
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "churnx/1/model.onnx", "other/1/model.onnx", "other/config.pbtxt"
    ]  # fmt: skip
    assert (tmp_path / "outside.txt").read_text() == "keep"


def test_an_s3_delete_outside_the_model_prefix_is_refused_and_the_rest_survives(s3):
    prefix = "paths/models"
    keys = ["churn/1/model.onnx", "churn/config.pbtxt", "churn-candidate-0123abcd/1/model.onnx", "other/1/model.onnx",
            "churnx/1/model.onnx"]  # fmt: skip
    for key in keys:
        storage.write_bytes(s3.uri(f"{prefix}/{key}"), key.encode())
    storage.write_bytes(s3.uri("paths/outside.txt"), b"keep")
    repository = Repository(s3.uri(prefix), "churn")
    for relative in ["..", "other", "churn/../other", "churn/../../outside.txt", "churnx", "", "churn/.."]:
        with pytest.raises(UnsafeDeleteError, match=rf"refusing to delete s3://.*outside s3://.*/{prefix}/churn/"):
            repository.delete(relative)
    assert len(storage.list_uris(s3.uri("paths"))) == len(keys) + 1
    repository.delete("churn/1")
    repository.delete("churn-candidate-0123abcd")
    left = sorted(storage.parse(uri).key for uri in storage.list_uris(s3.uri("paths")))
    assert left == [f"{prefix}/churn/config.pbtxt", f"{prefix}/churnx/1/model.onnx", f"{prefix}/other/1/model.onnx",
                    "paths/outside.txt"]  # fmt: skip


def test_a_local_version_is_staged_only_inside_the_model_folders(tmp_path):
    """The staging directory of a local commit is removed at the end: it must lie inside the model's folders too."""
    root = _local_repository(tmp_path)
    package = tmp_path / "model.onnx"
    package.write_bytes(b"onnx")
    repository = Repository(str(root), "churn")
    with pytest.raises(UnsafeDeleteError, match=r"refusing to delete .*/repo/other/\.staging-"):
        repository.write_version("other", 2, {"model.onnx": package}, {"version": 2})
    repository.write_version("churn-candidate-0123abcd", 2, {"model.onnx": package}, {"version": 2})
    assert sorted(p.name for p in (root / "churn-candidate-0123abcd").iterdir()) == ["1", "2"]
    assert sorted(p.name for p in (root / "other").iterdir()) == ["1", "config.pbtxt"]
