"""OpenVINO int8-static: ``nncf.quantize`` against embedc's step-by-step run of the same
pipeline (``embedc/targets/openvino/nncf_steps.py``), in memory and through a mapped IR
between steps: compile seconds, peak RSS and whether the IR is the same.

    PYTHONPATH=. .venv/bin/python benchmarks/nncf_steps.py -m multilingual-e5-small --work /tmp/nncf-ab [--repeats 2]

The first build fills a stage cache under ``--work`` with the model's export and torch
reference. Then every run is one build of ``openvino-cpu`` int8-static in its own process,
variants interleaved per repeat, each on a fresh stage cache that holds only hard links to
those two entries (so the artifact is compiled, never served from the cache). The variant is
chosen by replacing ``quantize_in_steps`` in the backend module inside that process only:
- ``nncf.quantize``: NNCF's own call, as before the stepped path;
- ``steps``: the stepped run without the mapped IR (what models under 256 MB get);
- ``steps-mapped``: the stepped run with the mapped IR between steps (models over 256 MB).
Peak RSS is the child process's (``wait4``); compile seconds are the backend's own
(convert / optimize / save, from the artifact's ``embedc.json``). ``--work`` must be a new
or empty folder, or one this script made before (it holds ``nncf-steps-ab.json``): a rerun
there adds ``--repeats`` more rounds to the earlier runs and reports them all.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("nncf.quantize", "steps", "steps-mapped")
MARKER = "nncf-steps-ab.json"


def _spec(model: str, out: Path, eval_max_length: int):
    from embedc.spec import BuildSpec, CalibrationSpec, MatrixEntry, ModelSpec

    return BuildSpec(model=ModelSpec(name=model), matrix=(MatrixEntry("openvino-cpu", ("int8-static",)),),
                     calibration=CalibrationSpec(eval_max_length=eval_max_length), out=str(out))


def _child(variant: str, model: str, stages: Path, out: Path, eval_max_length: int) -> None:
    import embedc.targets.openvino.backend as backend
    from embedc.build.pipeline import build

    stepped = backend.quantize_in_steps
    if variant == "nncf.quantize":
        backend.quantize_in_steps = lambda ov, nncf, model, dataset, *, scratch=None, **kw: nncf.quantize(
            model, dataset, **kw)
    elif variant == "steps":
        backend.quantize_in_steps = lambda *a, scratch=None, **kw: stepped(*a, scratch=None, **kw)
    result = build(_spec(model, out, eval_max_length), cache_dir=stages)
    art = result.out / "openvino-cpu" / "int8-static"
    meta = json.loads((art / "embedc.json").read_text())
    files = {f["path"]: f["sha256"] for f in meta["files"]}
    # (the recipe's "run" label is the backend's, whichever function this process swapped in)
    print(json.dumps({"seconds": meta["recipe"].get("seconds"),
                      "bin_sha256": next(v for k, v in files.items() if k.endswith(".bin")),
                      "parity_mean": meta["parity"]["mean"]}))


def _linked_cache(warm: Path, dest: Path) -> None:
    """A stage cache with only the export and reference entries, as hard links (entries are
    never changed in place, so sharing their files is safe)."""
    for stage in ("export", "reference"):
        for entry in (warm / stage).iterdir():
            if not entry.name.startswith("."):
                shutil.copytree(entry, dest / stage / entry.name, copy_function=os.link)


def _run(args, *child_args) -> tuple[dict, float, float]:
    cmd = [sys.executable, __file__, "--child", *map(str, child_args), "-m", args.model,
           "--eval-max-length", str(args.eval_max_length)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env={**os.environ, "EMBEDC_CACHE": str(args.work / "home")})
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"child {child_args} failed (status {status})")
    return json.loads(out.decode().strip().splitlines()[-1]), wall, usage.ru_maxrss / 1024 ** 2  # KiB -> GiB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-m", "--model", default="multilingual-e5-small")
    p.add_argument("--work", type=Path)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--eval-max-length", type=int, default=256)
    p.add_argument("--child", nargs=3, metavar=("VARIANT", "STAGES", "OUT"))
    args = p.parse_args()
    if args.child:
        variant, stages, out = args.child
        _child(variant, args.model, Path(stages), Path(out), args.eval_max_length)
        return

    work = args.work
    if work is None:
        p.error("--work is required")
    if work.exists() and any(work.iterdir()) and not (work / MARKER).is_file():
        raise SystemExit(f"{work} is not empty and was not made by this script: choose a new folder")
    work.mkdir(parents=True, exist_ok=True)
    warm = work / "warm-stages"
    record = json.loads((work / MARKER).read_text()) if (work / MARKER).is_file() else {"model": args.model}
    if record["model"] != args.model:
        raise SystemExit(f"{work} holds runs of {record['model']}: choose a new folder for {args.model}")
    rows = record.get("runs", [])
    if not rows:  # a rerun on the same folder adds repeats to the earlier ones
        (work / MARKER).write_text(json.dumps({"model": args.model, "runs": []}))
        print("filling the stage cache (export + reference) ...", flush=True)
        _run(args, "steps-mapped", warm, work / "warm-out")
    first = 1 + max((r["repeat"] for r in rows), default=-1)
    for r in range(first, first + args.repeats):
        for variant in (VARIANTS if r % 2 == 0 else VARIANTS[::-1]):
            run_dir = Path(tempfile.mkdtemp(dir=work, prefix="run-"))
            _linked_cache(warm, run_dir / "stages")
            res, wall, rss = _run(args, variant, run_dir / "stages", run_dir / "out")
            shutil.rmtree(run_dir)
            row = {"variant": variant, "repeat": r, "wall_s": round(wall, 1), "peak_rss_gib": round(rss, 2), **res}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (work / MARKER).write_text(json.dumps({"model": args.model, "runs": rows}, indent=1))
    print("\n| variant | optimize s (median) | compile s (median) | build wall s | peak RSS GiB | IR sha256 | mean |")
    print("|---|---|---|---|---|---|---|")
    for v in VARIANTS:
        mine = [r for r in rows if r["variant"] == v]
        opt = statistics.median(r["seconds"]["optimize"] for r in mine)
        total = statistics.median(sum(r["seconds"].values()) for r in mine)
        print(f"| {v} | {opt:.1f} | {total:.1f} | {statistics.median(r['wall_s'] for r in mine):.0f} | "
              f"{max(r['peak_rss_gib'] for r in mine):.2f} | {mine[0]['bin_sha256'][:12]} | {mine[0]['parity_mean']:.5f} |")
    same = len({r["bin_sha256"] for r in rows}) == 1
    print(f"\n{len(rows)} runs; model.bin {'the same in every run' if same else 'DIFFERS between runs'}")


if __name__ == "__main__":
    main()
