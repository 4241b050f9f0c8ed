"""Build spec validation: every bad key/value is an error naming the key."""
from __future__ import annotations

import pytest

from embedc.errors import SpecError, TargetError
from embedc.spec import BuildSpec, load_spec_file, spec_from_dict


def _write(tmp_path, text: str):
    p = tmp_path / "embedc.toml"
    p.write_text(text)
    return p


def test_repo_spec_file_is_valid():
    from pathlib import Path

    spec = load_spec_file(Path(__file__).parents[2] / "embedc.toml")
    assert spec.model.name == "multilingual-e5-small"
    targets = {t for t, _ in spec.pairs()}
    assert {"ort-cpu-avx2", "openvino-cpu", "tensorrt-sm90"} <= targets


@pytest.mark.parametrize("name", ["embedc.toml", "specs/all-minilm-l6-v2.toml", "specs/smollm2-135m-bidir.toml",
                                  "specs/smollm2-135m-last.toml"])
def test_repo_spec_files_pass_the_spec_time_checks(name):
    """Every spec shipped in the repo passes what a build checks before any work (targets,
    precisions, each recipe option's name and value, gate keys): a typo in a hand-written
    recipe fails here, not minutes into a build."""
    from pathlib import Path

    from embedc.spec import validate

    repo = Path(__file__).parents[2]
    assert sorted(str(p.relative_to(repo)) for p in (repo / "specs").glob("*.toml")) == \
        ["specs/all-minilm-l6-v2.toml", "specs/smollm2-135m-bidir.toml", "specs/smollm2-135m-last.toml"]
    spec = validate(load_spec_file(repo / name))
    assert spec.matrix


def test_defaults_roundtrip():
    spec = spec_from_dict({})
    assert spec == BuildSpec()
    assert spec.pairs()[0] == ("ort-cpu-avx2", "fp32")


@pytest.mark.parametrize("text, match", [
    ("colour = 1", "unknown spec key 'colour'"),
    ("[model]\nnmae = 'x'", r"unknown spec key 'model\.nmae'"),
    ("[calibration]\nseed = 'zero'", r"spec key 'calibration\.seed' has a bad value"),
    ("[calibration]\ncalib_per_lang = -3", r"'calibration\.calib_per_lang' must be >= 0"),
    ("[[matrix]]\ntarget = 'ort-cpu'\nprecisions = 'fp32'", r"'matrix\[0\]\.precisions' must be a non-empty list"),
    ("[[matrix]]\ntarget = 'ort-cpu'\nprecisions = ['fp32']\nflavour = 1", r"unknown spec key 'matrix\[0\]\.flavour'"),
    ("[gates]\nint8 = 'mean>>0.9'", r"spec key 'gates\.int8'"),
    ("[gates]\nint8 = 0.99", r"'gates\.int8' must be a string"),
    ("[bench]\nenabled = 'yes'", r"'bench\.enabled' has a bad value"),
    ("model = [", "not valid TOML"),
])
def test_bad_spec_names_the_key(tmp_path, text, match):
    with pytest.raises(SpecError, match=match):
        load_spec_file(_write(tmp_path, text))


def test_unknown_target_and_precision(tmp_path):
    with pytest.raises(TargetError, match="unknown target 'ort-gpu-9000'"):
        load_spec_file(_write(tmp_path, "[[matrix]]\ntarget = 'ort-gpu-9000'\nprecisions = ['fp32']"))
    with pytest.raises(TargetError, match="has no precision 'int3'"):
        load_spec_file(_write(tmp_path, "[[matrix]]\ntarget = 'ort-cpu'\nprecisions = ['int3']"))


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec_file(tmp_path / "nope.toml")


def test_options_and_gates_parsed(tmp_path):
    spec = load_spec_file(_write(tmp_path, """
[[matrix]]
target = "ort-cpu-avx2"
precisions = ["int8-static", "int4"]
options = { int4 = { block_size = 64 } }
[gates]
int8 = "mean>=0.99"
[gates.models."all-minilm-l6-v2"]
int8 = "mean>=0.98,lang_mean>=0.95"
"""))
    assert spec.options_for("ort-cpu-avx2", "int4") == {"block_size": 64}
    assert spec.gates == {"int8": "mean>=0.99"}
    assert spec.model_gates["all-minilm-l6-v2"]["int8"].startswith("mean>=0.98")
