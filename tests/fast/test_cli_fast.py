"""The CLI on the toy model and the fake backend: exit codes, one-line
errors, gates that travel with the artifact, options checked before work."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from embedc.cli import cli

LENIENT = "mean>=0.5,p01>=0,min>=0.1,lang_mean>=0.3,top10_overlap>=0,top1_agreement>=0"


def run(*args):
    return CliRunner().invoke(cli, ["-q", *map(str, args)])


def small(toy_model, out, *extra):
    return ["build", "-m", toy_model, "-o", out, "--calib-per-lang", "2", "--eval-per-lang", "4",
            "--max-length", "32", *extra]


def one_error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def gated_build(toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "build"
    r = run(*small(toy_model, out, "-t", "fake-cpu", "-p", "int8-noisy", "--gate", f"int8-noisy:{LENIENT}",
                   "--junit", out.parent / "parity.xml"))
    assert r.exit_code == 0, r.output
    return out


def test_parity_recheck_uses_the_gates_the_build_used(gated_build):
    """Built under a --gate, re-checked with no flags: the same verdict (exit 0), not the defaults' (exit 3)."""
    art = gated_build / "fake-cpu" / "int8-noisy"
    r = run("parity", art, "--json")
    assert r.exit_code == 0, r.output
    gates = {g["metric"]: g for g in json.loads(r.output)[0]["gates"]}
    assert gates["mean"]["threshold"] == 0.5 and gates["mean"]["source"] == "--gate int8-noisy"
    r = run("parity", art, "--gate", "mean>=0.999")  # an explicit override still wins
    assert r.exit_code == 3 and "mean>=0.999" in r.output


def test_junit_written_by_the_build(gated_build):
    text = (gated_build.parent / "parity.xml").read_text()
    assert 'classname="embedc.fake-cpu.int8-noisy"' in text and 'failures="0"' in text


def test_option_typo_fails_in_dry_run_before_any_work(toy_model, tmp_path):
    r = run(*small(toy_model, tmp_path / "o", "-t", "fake-cpu", "-p", "int8-noisy", "--option",
                   "int8-noisy.nois=1", "--dry-run"))
    assert r.exit_code == 2
    assert "unknown option 'nois'" in one_error_line(r) and "valid options: noise" in r.output
    r = run(*small(toy_model, tmp_path / "o", "-t", "fake-cpu", "-p", "int8-noisy", "--option",
                   "int8-noisy.noise=-3", "--dry-run"))
    assert r.exit_code == 2 and "noise=-3" in one_error_line(r)
    assert not (tmp_path / "o").exists()


def test_dry_run_prints_the_plan_with_resolved_options_and_gates(toy_model, tmp_path):
    r = run(*small(toy_model, tmp_path / "d", "-t", "fake-cpu", "-p", "fp32", "-p", "int8-noisy", "--dry-run"))
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert plan["adapter"]["pooling"]["mode"] == "mean" and plan["adapter"]["max_length"] == 64
    step = plan["plan"][-1]
    assert step["options"] == {"noise": 0.5} and {g["metric"] for g in step["gates"]} >= {"mean", "min"}
    assert not (tmp_path / "d").exists()


def test_target_and_precision_flags_keep_the_specs_recipe_options(toy_model, tmp_path):
    """-t/-p pick pairs out of a spec; that target's options in the spec still apply (a model's
    tuned recipe is not dropped by narrowing the build), and --option goes on top."""
    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nname = "%s"\n[[matrix]]\ntarget = "fake-cpu"\nprecisions = ["fp32", "int8-noisy"]\n'
                    'options = { int8-noisy = { noise = 0.25 } }\n' % toy_model)

    def options(*extra):
        r = run("build", "--spec", spec, "-o", tmp_path / "s", "-t", "fake-cpu", "-p", "int8-noisy", *extra,
                "--dry-run")
        assert r.exit_code == 0, r.output
        return json.loads(r.output)["plan"][-1]["options"]

    assert options() == {"noise": 0.25}                                    # not the backend's default 0.5
    assert options("--option", "int8-noisy.noise=0.75") == {"noise": 0.75}


def test_an_option_on_the_command_line_changes_one_value_of_the_specs_recipe(toy_model, tmp_path):
    """--option PREC.NAME=VALUE replaces that one value; the spec's other options for PREC stay."""
    spec = tmp_path / "spec.toml"
    spec.write_text('[model]\nname = "%s"\n[[matrix]]\ntarget = "ort-cpu"\nprecisions = ["int4"]\n'
                    'options = { int4 = { block_size = 16, is_symmetric = false } }\n' % toy_model)
    r = run("build", "--spec", spec, "-o", tmp_path / "s", "--option", "int4.block_size=64", "--dry-run")
    assert r.exit_code == 0, r.output
    options = json.loads(r.output)["plan"][-1]["options"]
    assert options["block_size"] == 64 and options["is_symmetric"] is False


def test_gate_failure_exits_3_and_a_broken_pair_exits_1(toy_model, tmp_path):
    r = run(*small(toy_model, tmp_path / "g", "-t", "fake-cpu", "-p", "int8-noisy"))
    assert r.exit_code == 3 and "fake-cpu/int8-noisy" in one_error_line(r)
    r = run(*small(toy_model, tmp_path / "b", "-t", "fake-cpu", "-p", "fp32", "-p", "int8-broken"))
    assert r.exit_code == 1
    assert "fake-cpu/int8-broken: RuntimeError: simulated third-party failure" in one_error_line(r)


@pytest.mark.parametrize("args, needle", [
    (("--seed", "-1"), "--seed"),
    (("--threads", "0"), "--threads"),
    (("--max-length", "4"), "--max-length"),
])
def test_bad_numbers_are_usage_errors(toy_model, tmp_path, args, needle):
    r = run(*small(toy_model, tmp_path / "n", *args, "--dry-run"))
    assert r.exit_code == 2 and needle in r.output


def test_junit_path_that_is_a_folder_is_refused_before_work(toy_model, tmp_path):
    r = run(*small(toy_model, tmp_path / "j", "-t", "fake-cpu", "-p", "fp32", "--junit", tmp_path))
    assert r.exit_code == 2 and "'--junit'" in r.output and "is a directory" in r.output
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("command", [[], ["models"], ["targets"], ["export"], ["build"], ["parity"], ["bench"],
                                     ["embed"], ["check-trt"], ["engine"]])
def test_every_command_has_help(command):
    r = run(*command, "--help")
    assert r.exit_code == 0 and "Usage:" in r.output


def test_targets_lists_registered_backends():
    r = run("targets", "--json")
    names = {t["name"] for t in json.loads(r.output)}
    assert {"fake-cpu", "ort-cpu", "openvino-cpu", "tensorrt-sm90"} <= names


def test_bench_rows_of_two_builds_of_one_pair_are_told_apart(tmp_path):
    from embedc.artifact import write_meta
    from embedc.bench.run import artifact_names

    folders = []
    for build, target, precision in [("a", "openvino-cpu", "int8-static"), ("b", "openvino-cpu", "int8-static"),
                                     ("a", "openvino-cpu", "fp32")]:
        folder = tmp_path / build / target / precision
        folder.mkdir(parents=True)
        write_meta(folder, {"target": target, "precision": precision})
        folders.append(folder)
    assert artifact_names(folders) == [f"openvino-cpu/int8-static ({folders[0]})",
                                       f"openvino-cpu/int8-static ({folders[1]})", "openvino-cpu/fp32"]
