"""BuildSpec: the one validated description of a build. CLI flags and a
TOML spec file both produce it; ``--dry-run`` prints it.

Spec file layout (every key optional except what a build needs)::

    out = "artifacts/e5-small"
    [model]        name, trust_remote_code, allow_pickle, query_prefix, passage_prefix, instruct_task
    [export]       opset, low_memory ("auto" | "on" | "off": meta-device export and tensor-by-tensor weights
                   for models too large for this machine's memory; see embedc/build/low_memory.py)
    [calibration]  corpus ("default" or a path), calib_per_lang, eval_per_lang, long_per_lang, seed,
                   min_languages, max_length (calibration texts), eval_max_length (evaluation texts)
    [[matrix]]     target = "ort-cpu-avx2", precisions = ["fp32", "int8-static"], options = {int8-static = {...}}
    [gates]        int8 = "mean>=0.995,min>=0.98"   ("*", a family or a precision -> gates)
    [gates.models."all-minilm-l6-v2"]  int8 = "mean>=0.99"   (only when that model is built)
    [bench]        enabled, threads, batch_size, repeats
    [outputs]      formats = ["int8", "ubinary"], dims = [256], int8_scheme, binary_scheme, rescore_multiplier, gates
                   (compressed output embeddings in the graph: embedc/outputs/)
    [executor]     kind ("local" | "ray"), address, cache (a shared stage-cache path), pair_timeout_s,
                   schedule_timeout_s, max_retries, cpus_per_pair, hardware ("required" | "any")

Artifacts always serve at the model's own maximum length; the two length
settings only bound the texts that calibrate and judge them.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SpecError, UsageError
from .outputs.spec import OutputsSpec


@dataclass(frozen=True)
class ModelSpec:
    name: str = "multilingual-e5-small"
    trust_remote_code: bool = False
    allow_pickle: bool = False
    query_prefix: str | None = None     # None: take the model's own
    passage_prefix: str | None = None
    instruct_task: str | None = None    # e5-instruct style queries


@dataclass(frozen=True)
class ExportSpec:
    opset: int = 18
    low_memory: str = "auto"


@dataclass(frozen=True)
class CalibrationSpec:
    corpus: str = "default"
    calib_per_lang: int = 8     # 38 languages x 8 = 304 texts: static ranges saturate well below this
    eval_per_lang: int = 16     # 608 texts: per-language means over 16, 8 queries vs 8 passages each
    seed: int = 0
    min_languages: int = 2
    max_length: int = 256       # truncation of calibration texts (static ranges settle on shorter texts)
    # truncation of evaluation texts; None: the model's own maximum, capped at EVAL_LENGTH_CAP
    eval_max_length: int | None = None
    long_per_lang: int = 2      # evaluation-only long passages per language (inputs up to the model's maximum)


# Parity runs on 2 CPU cores: long-context decoders (8K-32K positions) are judged up to
# this many tokens unless eval_max_length says otherwise; reports show the judged lengths.
EVAL_LENGTH_CAP = 2048


@dataclass(frozen=True)
class MatrixEntry:
    target: str
    precisions: tuple[str, ...]
    options: dict = field(default_factory=dict)   # precision -> {option: value}


@dataclass(frozen=True)
class BenchSpec:
    enabled: bool = False
    threads: int | None = None
    batch_size: int = 32
    repeats: int = 5


@dataclass(frozen=True)
class ExecutorSpec:
    """Where artifact jobs run (build/executor.py): in this process, or one Ray task per pair."""

    kind: str = "local"                 # "local" | "ray"
    address: str | None = None          # Ray cluster address; None: RAY_ADDRESS, else a local Ray
    cache: str | None = None            # stage cache root every node reads (a shared filesystem path)
    pair_timeout_s: float | None = None  # a pair running longer is cancelled and fails
    schedule_timeout_s: float = 60.0    # a pair no live node can run fails after waiting this long
    max_retries: int = 2                # Ray retries of a pair whose worker or node died
    cpus_per_pair: float = 1.0
    hardware: str = "required"          # "any": run pairs on any node (as a local build would)


EXECUTOR_KINDS = ("local", "ray")
HARDWARE_POLICIES = ("required", "any")


@dataclass(frozen=True)
class BuildSpec:
    model: ModelSpec = ModelSpec()
    export: ExportSpec = ExportSpec()
    calibration: CalibrationSpec = CalibrationSpec()
    matrix: tuple[MatrixEntry, ...] = (MatrixEntry("ort-cpu-avx2", ("fp32", "int8-dynamic", "int8-static", "int4")),)
    gates: dict = field(default_factory=dict)          # "*"/family/precision -> "metric>=x,..."
    model_gates: dict = field(default_factory=dict)    # model name -> {"*"/family/precision -> gates}
    run_gates: dict = field(default_factory=dict)      # --gate on the command line, same shape as gates
    bench: BenchSpec = BenchSpec()
    out: str | None = None
    outputs: OutputsSpec = OutputsSpec()    # compressed output embeddings (embedc/outputs/)
    executor: ExecutorSpec = ExecutorSpec()

    def pairs(self) -> list[tuple[str, str]]:
        return [(m.target, p) for m in self.matrix for p in m.precisions]

    def options_for(self, target: str, precision: str) -> dict:
        """The options of the matrix entry that lists this (target, precision)."""
        for m in self.matrix:
            if m.target == target and precision in m.precisions:
                return dict(m.options.get(precision, {}))
        return {}

    def gate_layers(self, model_names) -> list[tuple[str, dict]]:
        """The gate tables for ``parity.resolve_gates``, lowest precedence first."""
        layers = [("spec [gates]", self.gates)]
        for name in model_names:
            if name in self.model_gates:
                layers.append((f'spec [gates.models."{name}"]', self.model_gates[name]))
                break
        layers.append(("--gate", self.run_gates))
        return layers

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {"model": ModelSpec, "export": ExportSpec, "calibration": CalibrationSpec, "bench": BenchSpec,
             "executor": ExecutorSpec}


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise SpecError(f"spec key '{where}' must be a table", f"write [{where}] with key = value lines")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise SpecError(f"unknown spec key '{where}.{key}'", f"valid keys: {', '.join(fields)}")
    values = {}
    for key, value in data.items():
        expected = fields[key].type
        values[key] = _check_type(value, expected, f"{where}.{key}")
    return cls(**values)


def _check_type(value: Any, expected: str, where: str):
    kinds = {"str": str, "int": int, "bool": bool, "float": (int, float)}
    options = [t.strip() for t in str(expected).split("|")]
    if value is None and "None" in options:
        return value
    for opt in options:
        py = kinds.get(opt)
        if py is None:
            continue
        if opt == "int" and isinstance(value, bool):
            continue
        if isinstance(value, py):
            if opt == "int" and value < 0:
                raise SpecError(f"spec key '{where}' must be >= 0, got {value}", "use a non-negative number")
            return value
    raise SpecError(f"spec key '{where}' has a bad value {value!r}", f"expected {expected}")


def spec_from_dict(data: dict) -> BuildSpec:
    known = {"model", "export", "calibration", "matrix", "gates", "bench", "out", "outputs", "executor"}
    for key in data:
        if key not in known:
            raise SpecError(f"unknown spec key '{key}'", f"valid top-level keys: {', '.join(sorted(known))}")
    kwargs: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name in data:
            kwargs[name] = _build(cls, data[name], name)
    if "matrix" in data:
        kwargs["matrix"] = _matrix(data["matrix"])
    if "gates" in data:
        kwargs["gates"], kwargs["model_gates"] = _gates(data["gates"])
    if "out" in data:
        kwargs["out"] = _check_type(data["out"], "str", "out")
    if "outputs" in data:
        from .outputs.spec import from_table

        kwargs["outputs"] = from_table(data["outputs"])
    return validate(BuildSpec(**kwargs))


def _matrix(entries: Any) -> tuple[MatrixEntry, ...]:
    if not isinstance(entries, list) or not entries:
        raise SpecError("spec key 'matrix' must be a non-empty list of tables",
                        "write [[matrix]] entries with target and precisions")
    out = []
    for i, e in enumerate(entries):
        where = f"matrix[{i}]"
        if not isinstance(e, dict):
            raise SpecError(f"spec key '{where}' must be a table", "write target = ..., precisions = [...]")
        unknown = set(e) - {"target", "precisions", "options"}
        if unknown:
            raise SpecError(f"unknown spec key '{where}.{sorted(unknown)[0]}'", "valid keys: target, precisions, options")
        if not isinstance(e.get("target"), str):
            raise SpecError(f"spec key '{where}.target' is missing or not a string", "name a target from 'embedc targets'")
        precs = e.get("precisions")
        if not isinstance(precs, list) or not precs or not all(isinstance(p, str) for p in precs):
            raise SpecError(f"spec key '{where}.precisions' must be a non-empty list of strings",
                            'e.g. precisions = ["fp32", "int8-static"]')
        opts = e.get("options", {})
        if not isinstance(opts, dict) or not all(isinstance(v, dict) for v in opts.values()):
            raise SpecError(f"spec key '{where}.options' must map precision -> table of options",
                            'e.g. options = {int8-static = {calibrate_method = "minmax"}}')
        out.append(MatrixEntry(e["target"], tuple(precs), opts))
    return tuple(out)


def _gates(data: Any) -> tuple[dict, dict]:
    from .parity import parse_gates

    if not isinstance(data, dict):
        raise SpecError("spec key 'gates' must be a table", 'e.g. [gates] int8 = "mean>=0.995"')
    plain, per_model = {}, {}
    for key, value in data.items():
        if key == "models":
            if not isinstance(value, dict):
                raise SpecError("spec key 'gates.models' must be a table of model tables", "")
            for model, table in value.items():
                per_model[model] = {k: _gate_value(v, f"gates.models.{model}.{k}", parse_gates)
                                    for k, v in table.items()}
            continue
        plain[key] = _gate_value(value, f"gates.{key}", parse_gates)
    return plain, per_model


def _gate_value(value, where, parse_gates) -> str:
    if not isinstance(value, str):
        raise SpecError(f"spec key '{where}' must be a string like \"mean>=0.995,min>=0.98\"", "quote the gates")
    try:
        parse_gates(value)
    except Exception as exc:
        raise SpecError(f"spec key '{where}': {exc}", "see 'embedc build --help' for gate syntax") from exc
    return value


def validate(spec: BuildSpec) -> BuildSpec:
    """Checks that need the registries, run before any work: targets,
    precisions, every backend option (names and values), gate keys."""
    from .targets.registry import check_precision, get_backend, get_target

    seen = set()
    for i, m in enumerate(spec.matrix):
        t = get_target(m.target)
        for precision in m.precisions:
            check_precision(t, precision)
            if (m.target, precision) in seen:
                raise SpecError(f"({m.target}, {precision}) appears twice in the matrix", "list each pair once")
            seen.add((m.target, precision))
            get_backend(t).resolve_options(t, precision, dict(m.options.get(precision, {})))
        stray = sorted(set(m.options) - set(m.precisions))
        if stray:
            raise SpecError(f"matrix[{i}] ({m.target}) has options for {stray[0]!r}, which it does not build",
                            f"add {stray[0]!r} to its precisions or remove those options")
    from .outputs.spec import check as check_outputs

    check_outputs(spec.outputs)
    _check_gate_keys(spec.gates, "gates")
    _check_gate_keys(spec.run_gates, "--gate")
    for model, table in spec.model_gates.items():
        _check_gate_keys(table, f'gates.models."{model}"')
    from .build.low_memory import SETTINGS as LOW_MEMORY_SETTINGS

    if spec.export.low_memory not in LOW_MEMORY_SETTINGS:
        raise SpecError(f"spec key 'export.low_memory' is {spec.export.low_memory!r}",
                        f"choose one of: {', '.join(LOW_MEMORY_SETTINGS)}")
    c = spec.calibration
    if c.calib_per_lang < 1 or c.eval_per_lang < 2:
        raise SpecError("calibration sizes too small", "calib_per_lang >= 1 and eval_per_lang >= 2")
    if c.max_length < 8:
        raise SpecError(f"spec key 'calibration.max_length' is {c.max_length}", "use at least 8 tokens")
    if c.eval_max_length is not None and c.eval_max_length < 8:
        raise SpecError(f"spec key 'calibration.eval_max_length' is {c.eval_max_length}", "use at least 8 tokens")
    b = spec.bench
    if b.batch_size < 1 or b.repeats < 1 or (b.threads is not None and b.threads < 1):
        raise SpecError("bench.batch_size, bench.repeats and bench.threads must be at least 1",
                        "e.g. batch_size = 32, repeats = 5")
    _check_executor(spec.executor)
    return spec


def _check_executor(e: ExecutorSpec) -> None:
    if e.kind not in EXECUTOR_KINDS:
        raise SpecError(f"spec key 'executor.kind' is {e.kind!r}", f"choose one of: {', '.join(EXECUTOR_KINDS)}")
    if e.hardware not in HARDWARE_POLICIES:
        raise SpecError(f"spec key 'executor.hardware' is {e.hardware!r}",
                        f"choose one of: {', '.join(HARDWARE_POLICIES)}")
    for name in ("pair_timeout_s", "schedule_timeout_s", "cpus_per_pair"):
        value = getattr(e, name)
        if value is not None and not value > 0:
            raise SpecError(f"spec key 'executor.{name}' must be > 0, got {value}", "use a positive number")
    if e.kind == "local" and e.address:
        raise SpecError("spec key 'executor.address' is set but executor.kind is 'local'",
                        'set kind = "ray" or remove the address')


def _check_gate_keys(table: dict, where: str) -> None:
    """Gate keys are "*", a precision family or a precision; thresholds parse."""
    from .parity.gates import parse_gates, precision_family

    for key, value in table.items():
        if key != "*":
            try:
                precision_family(key)
            except UsageError:
                raise SpecError(f"'{where}' key {key!r} is not a precision or family",
                                'use "*", a family (fp32, fp16, int8, int4) or a precision like int8-static') from None
        try:
            parse_gates(value)
        except UsageError as exc:
            raise SpecError(f"'{where}.{key}': {exc.message}", exc.hint) from None


def load_spec_file(path: Path) -> BuildSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file {path} does not exist", "pass an existing TOML file to --spec")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise SpecError(f"spec file {path} is not UTF-8 (byte {exc.start})", "save it as UTF-8") from exc
    except OSError as exc:
        raise SpecError(f"cannot read spec file {path}: {exc.strerror}", "check its permissions") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"spec file {path} is not valid TOML: {exc}", "fix the syntax") from exc
    return spec_from_dict(data)
