"""Shared pieces of the reliability suite: a small three-language corpus, a
backend whose int8 recipe captures activations like ORT's int8-static (the
``stats-probe`` path), a subprocess runner of the toy CLI, and folder digests
for "byte-identical afterwards" checks."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from toy import OrtRunner

from embedc.targets.base import Backend, Capabilities, CompileResult, Target

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TEXTS = {
    "eng": ["The cat sat on the mat", "Rain falls in spring", "Markets opened higher today",
            "She reads books at night", "Trains run every hour", "Coffee helps me focus",
            "The river flooded the valley after a long week of heavy rain and wind",
            "Solar panels convert sunlight into electricity for homes and offices"],
    "deu": ["Die Katze schläft", "Es regnet heute", "Der Zug ist spät", "Ich trinke Kaffee",
            "Die Schule beginnt um acht", "Das Wetter ist schön",
            "Der Fluss trat nach einer langen Woche mit starkem Regen über die Ufer",
            "Solarzellen wandeln Sonnenlicht in Strom für Häuser und Büros um"],
    "fra": ["Le chat dort", "Il pleut aujourd'hui", "Le train est en retard", "Je bois du café",
            "L'école commence à huit heures", "Il fait beau",
            "La rivière a débordé après une longue semaine de fortes pluies",
            "Les panneaux solaires transforment la lumière en électricité"],
}
LENIENT = "mean>=0.5,p01>=0,min>=0.1,lang_mean>=0.3,top10_overlap>=0,top1_agreement>=0"


def write_corpus(path: Path) -> Path:
    path.write_text("".join(json.dumps({"text": t, "lang": lang}) + "\n" for lang, ts in TEXTS.items() for t in ts),
                    encoding="utf-8")
    return path


def build_args(model, corpus, out, *extra) -> list[str]:
    return ["build", "-m", str(model), "-o", str(out), "--calib", str(corpus), "--calib-per-lang", "2",
            "--eval-per-lang", "4", "--max-length", "32", *map(str, extra)]


TOY_CLI = HERE / "toy_cli.py"


def cli_env(cache: Path, env: dict | None = None) -> dict:
    """The environment of a toy CLI process: its cache, one thread, tests/fast on the path."""
    e = {**os.environ, "EMBEDC_CACHE": str(cache), "OMP_NUM_THREADS": "1",
         "PYTHONPATH": os.pathsep.join([str(REPO / "tests" / "fast"), str(HERE), str(REPO)]), **(env or {})}
    if not (env and "EMBEDC_FAULT" in env):
        e.pop("EMBEDC_FAULT", None)
    return e


def run_cli(args, *, cache: Path, env: dict | None = None, cwd: Path | None = None, wait=True):
    """The toy CLI in its own process (``-q``); returns CompletedProcess (or Popen with wait=False)."""
    e = cli_env(cache, env)
    cmd = [sys.executable, str(TOY_CLI), "-q", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=e, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=e, cwd=cwd, capture_output=True, text=True, timeout=300)


def tree_digest(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (and '<dir>' for folders) under ``folder``."""
    folder = Path(folder)
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def hidden_temps(parent: Path) -> list[str]:
    """embedc temp/staging folders left in ``parent`` (dot-named)."""
    return sorted(p.name for p in Path(parent).iterdir() if p.name.startswith("."))


def cache_problems(cache_stages: Path) -> list[str]:
    """Every cache entry verifies (listed files intact, nothing extra) and no temp folder is left."""
    from embedc.build.cache import LOCKS, StageCache

    cache = StageCache(cache_stages)
    problems = []
    if not cache.root.is_dir():
        return problems
    for stage in sorted(cache.root.iterdir()):
        if stage.name == LOCKS:   # lock files of keys being stored: left in place by design
            continue
        for entry in sorted(stage.iterdir()):
            if entry.name.startswith("."):
                problems.append(f"temp folder {stage.name}/{entry.name}")
            elif cache.lookup(stage.name, entry.name) is None:
                problems.append(f"corrupt entry {stage.name}/{entry.name}")
    return problems


def error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("error:", "interrupted"))]


def rel_spec(toy, corpus, out, precisions=("fp32",), target="fake-cpu", options=None, gates=None):
    from embedc.spec import BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

    return BuildSpec(model=ModelSpec(name=str(toy)),
                     calibration=CalibrationSpec(corpus=str(corpus), calib_per_lang=2, eval_per_lang=4,
                                                 max_length=32),
                     matrix=(MatrixEntry(target, tuple(precisions), options or {}),), out=str(out),
                     gates=gates or {})


class ProbeBackend(Backend):
    """int8-probe: like ORT int8-static, it captures FP32 activations of the
    reference (a probe model written to scratch) before "quantizing" (a copy
    with the projection rounded to a coarse grid)."""

    name = "probe"
    targets = (Target("probe-cpu", "probe", "cpu", "activation-capturing fake backend", ("int8-probe",)),)
    libraries = ("onnxruntime",)
    capabilities = Capabilities(report_marker="P")

    def resolve_options(self, target, precision, options):
        unknown = sorted(set(options) - {"step"})
        if unknown:
            from embedc.errors import TargetError

            raise TargetError(f"unknown option {unknown[0]!r}", "valid options: step")
        return {"step": 0.05, **options}

    def compile(self, target, precision, ctx, out_dir):
        import numpy as np
        import onnx
        from onnx import numpy_helper

        from embedc.onnxkit.activations import capture

        stats = capture(ctx.reference_onnx, ["p"], ctx.calibration, threads=1, scratch=ctx.work_dir)
        model = onnx.load(str(ctx.reference_onnx))
        step = float(self.resolve_options(target, precision, ctx.options)["step"])
        for init in model.graph.initializer:
            if init.name == "proj_w":
                w = numpy_helper.to_array(init)
                init.CopyFrom(numpy_helper.from_array((np.round(w / step) * step).astype(np.float32), init.name))
        onnx.save(model, str(Path(out_dir) / "model.onnx"))
        return CompileResult(model_file="model.onnx", recipe={"step": step, "captured_rows": stats.sampled_rows})

    def load(self, artifact_dir, meta, *, threads=None):
        return OrtRunner(Path(artifact_dir) / meta["model_file"])
