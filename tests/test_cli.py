"""The kfp-mlops command line: sample-data, compile, and its errors."""

from __future__ import annotations

import pyarrow.parquet as pq
import yaml

from kfp_mlops.cli import main
from kfp_mlops.cli_common import config_text


def test_sample_data_writes_a_parquet_file(tmp_path, capsys):
    assert main(["sample-data", "--output", str(tmp_path / "d"), "--rows", "300", "--seed", "2", "--drift"]) == 0
    path = capsys.readouterr().out.strip()
    assert path == str(tmp_path / "d" / "churn.parquet")
    assert pq.read_table(path).num_rows == 300


def test_compile_writes_every_pipeline_with_the_images_from_the_flags(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KFP_MLOPS_IMAGE_TAG", "from-env")
    code = main(["compile", "--output-dir", str(tmp_path), "--image-registry", "reg.local/team", "--image-tag", "v9"])
    assert code == 0
    names = ("training", "monitoring", "inference")
    assert capsys.readouterr().out.split() == [str(tmp_path / f"{name}.yaml") for name in names]
    assert "image: reg.local/team/kfp-mlops-ingest:v9" in (tmp_path / "training.yaml").read_text()


def test_compile_takes_the_tag_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_MLOPS_IMAGE_TAG", "from-env")
    assert main(["compile", "training", "--output-dir", str(tmp_path)]) == 0
    assert "kfp-mlops-ingest:from-env" in (tmp_path / "training.yaml").read_text()


def test_invalid_config_file_exits_2_naming_the_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("data: {source: x.parquet}\nschema: {entity: id, timestamp: ts, label: y, colour: red}\n")
    code = main(["run", "training", "--local", "--config", str(path), "--pipeline-root", str(tmp_path / "r")])
    assert code == 2
    assert "schema.colour: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_relative_data_source_resolves_against_the_config_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text("data: {source: ../data/}\nschema: {entity: id, timestamp: ts, label: y}\n")
    assert yaml.safe_load(config_text(path))["data"]["source"] == f"{tmp_path / 'data'}/"


def test_malformed_param_is_rejected(tmp_path, capsys):
    assert main(["run", "training", "--local", "--param", "novalue", "--pipeline-root", str(tmp_path)]) == 2
    assert "expected key=value" in capsys.readouterr().err


def readme_commands() -> list[list[str]]:
    """Every ``kfp-mlops …`` command in the README's shell blocks (continuations joined, comments dropped, $VARS
    given a value; the synopsis, with its [options] and a|b, left out), as argument lists."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"\s*&&\s*", line.split("  #")[0].strip()):
                if part.startswith("kfp-mlops ") and not re.search(r"\[-|\||…", part):  # not the synopsis
                    expanded = re.sub(r"\$(\w+)", "value", part)
                    commands.append(shlex.split(expanded)[1:])
    return commands


def test_every_kfp_mlops_command_in_the_readme_parses_with_the_real_command_line(capsys):
    """Docs never lie: the two operator guides and the command list use flags the command line has."""
    from kfp_mlops.cli import build_parser

    commands = readme_commands()
    assert len(commands) >= 10 and {c[0] for c in commands} >= {"compile", "upload", "submit", "schedule"}
    refused = []
    for words in commands:
        try:
            build_parser().parse_args(words)
        except SystemExit:
            refused.append(f"kfp-mlops {' '.join(words)}: {capsys.readouterr().err.strip().splitlines()[-1]}")
    assert refused == []
