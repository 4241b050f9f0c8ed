"""CLI contract: --help everywhere, one-line errors, exit codes 0/1/2/3."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from embedc.cli import cli

COMMANDS = ["models", "targets", "export", "build", "parity", "bench", "embed", "check-trt", "engine"]
TINY = ["-m", "random-tiny-xlmr", "--calib-per-lang", "2", "--eval-per-lang", "4", "--max-length", "64"]


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(runner, command):
    result = runner.invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_models_and_targets_json(runner):
    models = json.loads(runner.invoke(cli, ["models", "--json"]).output)
    assert any(m["default"] and m["name"] == "multilingual-e5-small" for m in models)
    targets = {t["name"] for t in json.loads(runner.invoke(cli, ["targets", "--json"]).output)}
    assert {"ort-cpu", "ort-cpu-avx2", "ort-cpu-avx512-vnni", "ort-cpu-arm64", "openvino-cpu", "openvino-npu",
            "tensorrt-sm90"} <= targets


def _one_line_error(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_unknown_target_is_usage_error(runner, tmp_path):
    result = runner.invoke(cli, ["build", *TINY, "-t", "ort-gpu-9000", "-p", "fp32", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "unknown target 'ort-gpu-9000'" in _one_line_error(result)
    assert not (tmp_path / "o").exists()


def test_unknown_precision_is_usage_error(runner, tmp_path):
    result = runner.invoke(cli, ["build", *TINY, "-t", "ort-cpu", "-p", "int3", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "has no precision 'int3'" in _one_line_error(result)


def test_missing_model_folder(runner, tmp_path):
    result = runner.invoke(cli, ["export", "-m", str(tmp_path / "nope"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "does not exist" in _one_line_error(result)
    assert not (tmp_path / "o").exists()


def test_empty_corpus(runner, tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_text("\n\n")
    result = runner.invoke(cli, ["build", *TINY, "-t", "ort-cpu", "-p", "fp32", "--calib", str(corpus),
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "empty" in _one_line_error(result).lower()
    assert not (tmp_path / "o").exists()


def test_one_language_corpus_when_stratifying(runner, tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"Sentence number {i} about topic {i * 7}.", "lang": "eng"})
                                for i in range(60)))
    result = runner.invoke(cli, ["build", *TINY, "-t", "ort-cpu", "-p", "fp32", "--calib", str(corpus),
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "language" in _one_line_error(result)
    assert not (tmp_path / "o").exists()


def test_dry_run_prints_plan(runner, tmp_path):
    result = runner.invoke(cli, ["build", *TINY, "-t", "ort-cpu", "-p", "fp32", "-p", "int4", "--dry-run",
                                 "-o", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert [s["stage"] for s in plan["plan"]][-2:] == ["compile ort-cpu/fp32", "compile ort-cpu/int4"]
    assert not (tmp_path / "o").exists()


def test_gate_failure_exit_3_then_parity_recheck(runner, tmp_path):
    out = tmp_path / "o"
    junit = tmp_path / "junit.xml"
    result = runner.invoke(cli, ["build", *TINY, "-t", "ort-cpu", "-p", "fp32", "-p", "int8-dynamic",
                                 "--gate", "int8:min>=1.0", "-o", str(out), "--junit", str(junit)])
    assert result.exit_code == 3, result.output
    assert "parity gate failed for 1 artifact(s): ort-cpu/int8-dynamic" in _one_line_error(result)
    assert not out.exists()  # a failing build never creates (or replaces) <out>: its reports go beside it
    out = tmp_path / "o.failed"
    assert (out / "report.md").is_file() and junit.is_file()
    assert not (out / "ort-cpu" / "int8-dynamic").exists()
    again = runner.invoke(cli, ["build", *TINY, "-t", "ort-cpu", "-p", "fp32", "-o", str(tmp_path / "again")])
    assert again.exit_code == 0, again.output
    assert "1 of 1 artifacts served from the stage cache; compiled: nothing" in again.output
    # The CI command: re-check the kept artifact, then break it.
    ok = runner.invoke(cli, ["parity", str(out / "ort-cpu" / "fp32")])
    assert ok.exit_code == 0, ok.output
    broken = tmp_path / "broken"
    shutil.copytree(out / "ort-cpu" / "fp32", broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])
    result = runner.invoke(cli, ["parity", str(broken)])
    assert result.exit_code == 1
    assert "does not match its recorded sha256" in _one_line_error(result)
