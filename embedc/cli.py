"""The ``embedc`` command line: parse, call the library, map errors to exit
codes (0 ok, 1 error, 2 usage, 3 parity gate failed). Heavy imports stay
inside the commands so ``--help`` is fast."""
from __future__ import annotations

import json
import logging
import os
import sys

import click

from .errors import EmbedcError, UsageError


class _Group(click.Group):
    """Turns library errors into one red line and the error's exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmbedcError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.secho("interrupted: nothing was replaced (earlier results are intact)", fg="red", err=True)
            ctx.exit(130)
        except BaseException as exc:
            from .build.signals import BuildInterrupted

            if not isinstance(exc, BuildInterrupted):
                raise
            click.secho(f"interrupted by {exc.name}: nothing was replaced (earlier results are intact)",
                        fg="red", err=True)
            ctx.exit(exc.exit_code)


def _setup_logging(quiet: bool, verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(show_time=False, show_path=False, markup=False,
                          console=__import__("rich.console").console.Console(stderr=True))
    logger = logging.getLogger("embedc")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx", "torch.onnx._internal.exporter._registration",
                  "nncf", "transformers",
                  # transformers imports torchao when installed (neural-compressor[pt] brings it): it warns
                  # that its CUDA kernels do not load, and torch that torchao registers enums the old way
                  "torchao", "torch.utils._pytree"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # transformers reads TRANSFORMERS_VERBOSITY when it is first imported: setting the variable spares
    # commands that never load a model the import (0.7 s); a user's own setting wins
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        if "transformers" in sys.modules:  # imported already (the CLI called in-process): set it directly
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="embedc")
def cli(quiet: bool, verbose: bool) -> None:
    """Compile text-embedding models into parity-checked deployment artifacts."""
    from .targets.openvino.telemetry import block_telemetry

    block_telemetry()  # before anything imports openvino or nncf (sentence-transformers' backends included)
    _setup_logging(quiet, verbose)


def _model_options(f):
    f = click.option("--allow-pickle", is_flag=True,
                     help="Allow pickle-format weights (*.bin): they can run code when loaded.")(f)
    f = click.option("--trust-remote-code", is_flag=True,
                     help="Allow the model's own Python code (auto_map); review it first.")(f)
    f = click.option("-m", "--model", default=None, metavar="MODEL",
                     help="Catalog name (see 'embedc models'), local HF folder, or hub id org/name[@rev]."
                          " [default: multilingual-e5-small]")(f)
    return f


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models(as_json: bool) -> None:
    """List the offline model catalog (no network needed)."""
    from .models import CATALOG, DEFAULT_MODEL

    rows = [{"name": e.name, "kind": e.kind, "default": e.name == DEFAULT_MODEL,
             "description": e.description} for e in CATALOG.values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        star = "*" if r["default"] else " "
        click.echo(f"{star} {r['name']:<24} {r['kind']:<8} {r['description']}")
    click.echo("\nAlso accepted: a local Hugging Face folder, or a hub id (org/name[@revision]) "
               "when the hub or its cache is reachable.")


@cli.command()
@_model_options
@click.option("-o", "--out", default=None, type=click.Path(), help="Output folder [default: artifacts/<model>/export].")
@click.option("--opset", default=18, show_default=True, type=int, help="ONNX opset (17-20).")
@click.option("--force", is_flag=True, help="Replace an existing output folder (only after success).")
@click.option("--min-cosine", default=0.99999, show_default=True, type=float, help="Validation gate: per-text cosine.")
@click.option("--max-abs-diff", default=1e-4, show_default=True, type=float, help="Validation gate: max abs difference.")
@click.option("--low-memory", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Meta-device export, weights one tensor at a time (auto: FP32 weights > 45% of RAM).")
def export(model, trust_remote_code, allow_pickle, out, opset, force, min_cosine, max_abs_diff, low_memory) -> None:
    """Export the FP32 reference ONNX (pooled + normalized) and validate it against PyTorch."""
    from pathlib import Path

    from .exporter import ValidationGate, export_reference
    from .models import DEFAULT_MODEL, resolve_model

    source = resolve_model(model or DEFAULT_MODEL, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    out_dir = Path(out) if out else Path("artifacts") / _slug(source.name) / "export"
    from .build.signals import handled

    with handled():  # SIGTERM cleans up like Ctrl-C
        from .build.low_memory import resolve_low_memory
        from .families import load_model_tokenizer

        family, _, adapter = load_model_tokenizer(source, shared=True)
        low = resolve_low_memory(low_memory, family, source, adapter)
        result = export_reference(source, out_dir, opset=opset, force=force, low_memory=low["enabled"],
                                  gate=ValidationGate(min_cosine=min_cosine, max_abs_diff=max_abs_diff))
    v = result.meta["validation"]
    click.echo(f"exported {source.name} -> {result.path}")
    click.echo(f"validation vs PyTorch on {v['texts']} multilingual texts (batch 1/3/8, short/128/512 tokens): "
               f"mean cosine {v['mean_cosine']:.7f}, min cosine {v['min_cosine']:.7f}, "
               f"max abs diff {v['max_abs_diff']:.2e}: PASS")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def targets(as_json: bool) -> None:
    """List hardware targets and the precisions each supports."""
    from .targets.registry import all_targets

    rows = [{"name": t.name, "backend": t.backend, "device": t.device, "precisions": list(t.precisions),
             "runs_here": t.runs_here, "description": t.description} for t in all_targets().values()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['name']:<22} {', '.join(r['precisions']):<52} {r['description']}")


def _parse_gate_options(values: tuple[str, ...]) -> dict:
    """--gate 'mean>=0.99' (every precision) or --gate 'int8:mean>=0.99,min>=0.97'."""
    from .parity import parse_gates

    out: dict[str, list[str]] = {}
    for v in values:
        key, sep, gates = v.partition(":")
        if not sep:
            key, gates = "*", v
        parse_gates(gates)
        out.setdefault(key.strip(), []).append(gates)
    return {k: ",".join(v) for k, v in out.items()}


def _spec_from_cli(spec_file, model, target, precision, calib, calib_per_lang, eval_per_lang, seed, min_languages,
                   max_length, eval_max_length, option, gate, out, bench, threads):
    import dataclasses

    from .spec import BuildSpec, MatrixEntry, load_spec_file, validate

    spec = load_spec_file(spec_file) if spec_file else BuildSpec()
    changes = {}
    if model:
        changes["model"] = dataclasses.replace(spec.model, name=model)
    cal = {k: v for k, v in {"corpus": calib, "calib_per_lang": calib_per_lang, "eval_per_lang": eval_per_lang,
                              "seed": seed, "min_languages": min_languages, "max_length": max_length,
                              "eval_max_length": eval_max_length}.items() if v is not None}
    if cal:
        changes["calibration"] = dataclasses.replace(spec.calibration, **cal)
    if target or precision:
        targets = target or tuple(dict.fromkeys(m.target for m in spec.matrix))
        if not precision:
            raise UsageError("--target needs at least one --precision", "e.g. --precision int8-static")
        opts = _parse_options(option)
        # -t/-p pick pairs; the spec's recipe options for those targets still apply, --option on top
        changes["matrix"] = tuple(
            MatrixEntry(t, tuple(precision), _merge_options(
                *[{k: v for k, v in m.options.items() if k in precision} for m in spec.matrix if m.target == t], opts))
            for t in targets)
    elif option:
        opts = _parse_options(option)
        changes["matrix"] = tuple(dataclasses.replace(m, options=_merge_options(m.options, opts)) for m in spec.matrix)
    if gate:
        changes["run_gates"] = _parse_gate_options(gate)
    if out:
        changes["out"] = out
    if bench or threads:
        changes["bench"] = dataclasses.replace(spec.bench, enabled=spec.bench.enabled or bench,
                                               threads=threads or spec.bench.threads)
    return validate(dataclasses.replace(spec, **changes))


def _merge_options(*layers: dict) -> dict:
    """{precision: {name: value}} tables merged per precision, later layers winning."""
    out: dict[str, dict] = {}
    for layer in layers:
        for prec, values in layer.items():
            out.setdefault(prec, {}).update(values)
    return out


def _parse_options(values: tuple[str, ...]) -> dict:
    """--option int8-static.calibrate_method=entropy  ->  {"int8-static": {"calibrate_method": "entropy"}}"""
    out: dict[str, dict] = {}
    for v in values:
        key, sep, raw = v.partition("=")
        prec, dot, name = key.partition(".")
        if not sep or not dot:
            raise UsageError(f"bad --option {v!r}", "write PRECISION.NAME=VALUE, e.g. int4.block_size=32")
        out.setdefault(prec, {})[name] = _coerce(raw)
    return out


def _coerce(raw: str):
    try:
        return json.loads(raw)
    except ValueError:
        return raw


@cli.command()
@click.option("--spec", "spec_file", type=click.Path(), help="TOML build spec (flags below override it).")
@_model_options
@click.option("-t", "--target", multiple=True, help="Target (repeatable; see 'embedc targets').")
@click.option("-p", "--precision", multiple=True, help="Precision (repeatable): fp32, fp16, int8-dynamic, int8-static, int8-weights, int8, int4.")
@click.option("--calib", default=None, help="Calibration corpus: 'default' (38 languages), .txt, .jsonl or folder.")
@click.option("--calib-per-lang", type=click.IntRange(min=1), default=None, help="Calibration texts per language.")
@click.option("--eval-per-lang", type=click.IntRange(min=2), default=None, help="Held-out evaluation texts per language.")
@click.option("--seed", type=click.IntRange(min=0), default=None, help="Split seed.")
@click.option("--min-languages", type=click.IntRange(min=1), default=None,
              help="Refuse corpora with fewer languages [default: 2; unlabelled .txt corpora are split as one].")
@click.option("--max-length", type=click.IntRange(min=8), default=None,
              help="Token truncation of calibration texts (artifacts always serve at the model's own maximum).")
@click.option("--eval-max-length", type=click.IntRange(min=8), default=None,
              help="Token truncation of evaluation texts [default: the model's maximum, at most 2048].")
@click.option("--option", "option", multiple=True, metavar="PREC.NAME=VALUE", help="Backend option, e.g. int4.block_size=32.")
@click.option("--gate", multiple=True, metavar="[PREC:]GATES", help="Parity gates, e.g. 'int8:mean>=0.995,min>=0.98'.")
@click.option("-o", "--out", default=None, help="Build folder [default: artifacts/<model>].")
@click.option("--force", is_flag=True, help="Replace an existing build folder (only after the new build is complete).")
@click.option("--dry-run", is_flag=True, help="Print the resolved spec and plan; run nothing.")
@click.option("--output", "output_formats", default=None, metavar="FORMATS",
              help="Compressed outputs in the graph: float32,int8,int8-tanh,binary,ubinary (spec: [outputs]).")
@click.option("--dims", "output_dims", default=None, metavar="N[,N]",
              help="Matryoshka dims of the compressed outputs, e.g. 256 or 256,128 [default: the model's width].")
@click.option("--bench", is_flag=True, help="Benchmark every artifact against torch FP32 after the build.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for benchmarks.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary.")
@click.option("--junit", type=click.Path(dir_okay=False), default=None,
              help="Write a JUnit XML file: one case per (artifact, gate).")
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None,
              help="Where artifacts are built: this process, or one Ray task per pair [default: spec, else local].")
@click.option("--ray-address", default=None, help="Ray cluster address (implies --executor ray) [default: RAY_ADDRESS].")
@click.option("--low-memory", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Meta-device export, weights one tensor at a time [default: spec, else auto: FP32 weights > 45% of RAM].")
def build(spec_file, model, trust_remote_code, allow_pickle, target, precision, calib, calib_per_lang, eval_per_lang,
          seed, min_languages, max_length, eval_max_length, option, gate, out, force, dry_run, bench, threads, as_json,
          junit, executor, ray_address, output_formats=None, output_dims=None, low_memory=None) -> None:
    """Export, calibrate, compile every (target, precision), check parity, report."""
    import dataclasses

    from .errors import ParityGateError

    spec = _spec_from_cli(spec_file, model, target, precision, calib, calib_per_lang, eval_per_lang, seed,
                          min_languages, max_length, eval_max_length, option, gate, out, bench, threads)
    if trust_remote_code or allow_pickle:
        spec = dataclasses.replace(spec, model=dataclasses.replace(
            spec.model, trust_remote_code=trust_remote_code or spec.model.trust_remote_code,
            allow_pickle=allow_pickle or spec.model.allow_pickle))
    if low_memory is not None:
        spec = dataclasses.replace(spec, export=dataclasses.replace(spec.export, low_memory=low_memory))
    if output_formats is not None or output_dims is not None:
        from .outputs.spec import check as check_outputs
        from .outputs.spec import parse_dims, parse_formats

        o = spec.outputs
        spec = dataclasses.replace(spec, outputs=check_outputs(dataclasses.replace(
            o, formats=o.formats if output_formats is None else parse_formats(output_formats),
            dims=o.dims if output_dims is None else parse_dims(output_dims))))
    if executor or ray_address:
        from .spec import validate

        kind = executor or "ray"
        spec = validate(dataclasses.replace(spec, executor=dataclasses.replace(
            spec.executor, kind=kind, address=ray_address or (spec.executor.address if kind == "ray" else None))))
    if dry_run:
        from .build.plan import plan_build

        click.echo(json.dumps(plan_build(spec), indent=2))
        return
    from .build.pipeline import build as run_build
    from .build.signals import handled

    with handled():  # SIGTERM (CI cancel, timeout, docker stop) cleans up like Ctrl-C
        result = run_build(spec, force=force)
    if (result.manifest.get("bench") or {}).get("rows"):
        from .bench.run import render_bench

        click.echo(render_bench(result.manifest["bench"]))
    if junit:
        from .build.output_guard import junit_path
        from .reports.junit import write_junit

        write_junit(result, junit_path(junit, result.out))
    _print_build(result, as_json)
    if result.failed_gates:
        names = ", ".join(a.name for a in result.failed_gates)
        raise ParityGateError(f"parity gate failed for {len(result.failed_gates)} artifact(s): {names}",
                              f"see {result.out}/report.md; loosen with --gate only if the loss is acceptable")
    if result.errors:
        from .errors import CompileError

        raise CompileError(f"{len(result.errors)} artifact(s) failed to build: "
                           + "; ".join(f"{a.name}: {a.error}" for a in result.errors), "see the log above")


def _print_build(result, as_json: bool) -> None:
    from .parity import render_table

    if as_json:
        summary = {"out": str(result.out), "verdict": result.manifest["verdict"],
                   "artifacts": [{k: a.get(k) for k in ("name", "status", "path", "cached", "parity", "bytes", "error")}
                                 for a in result.manifest["artifacts"]]}
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"\nbuild folder: {result.out}")
    click.echo(f"{'artifact':<34} {'status':<6} {'mean':>8} {'p01':>8} {'min':>8} {'worst lang':>16} {'top10':>6} {'MB':>8}")
    for a in result.manifest["artifacts"]:
        p = a.get("parity") or {}
        langs = p.get("languages") or {}
        wl = min(langs.items(), key=lambda kv: kv[1]["mean"]) if langs else ("-", {"mean": float("nan")})
        top = (p.get("retrieval") or {}).get("topk_overlap")
        click.echo(f"{a['name']:<34} {a['status']:<6} {p.get('mean', float('nan')):>8.5f} {p.get('p01') or float('nan'):>8.5f} "
                   f"{p.get('min', float('nan')):>8.5f} {wl[0]:>7} {wl[1]['mean']:>8.5f} "
                   f"{top if top is not None else float('nan'):>6.3f} {(a.get('bytes') or 0) / 1e6:>8.1f}")
    arts = result.artifacts
    compiled = [a.name for a in arts if not a.cached and a.status != "error"]
    click.echo(f"{sum(a.cached for a in arts)} of {len(arts)} artifacts served from the stage cache; "
               f"compiled: {', '.join(compiled) or 'nothing'}; {result.manifest.get('seconds', 0):.1f} s")
    for a in result.failed_gates:
        click.echo(render_table(a.gates, title=f"FAILED: {a.name}"), err=True)


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path())
@click.option("--gate", multiple=True, metavar="[PREC:]GATES",
              help="Override the gates stored in the artifact, e.g. 'int8:mean>=0.995'.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Inference threads.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def parity(artifacts, gate, threads, as_json) -> None:
    """Re-check built artifacts against the torch FP32 reference (exit 3 on a failed gate)."""
    from .errors import ParityGateError
    from .parity import render_table
    from .parity.recheck import recheck_artifact

    gate_table = _parse_gate_options(gate)
    failed, rows = [], []
    for path in artifacts:
        meta, result, outcomes = recheck_artifact(path, gate_table=gate_table, threads=threads)
        prec = meta["precision"]
        ok = all(not o.failed for o in outcomes)
        rows.append({"artifact": str(path), "passed": ok, "mean": result.mean, "min": result.min,
                     "gates": [o.to_dict() for o in outcomes]})
        if not as_json:
            click.echo(render_table(outcomes, title=f"{'PASS' if ok else 'FAIL'}: {path} ({meta['target']}, {prec})"))
        if not ok:
            failed.append(str(path))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    if failed:
        raise ParityGateError(f"parity gate failed for {len(failed)} artifact(s): {', '.join(failed)}",
                              "see the table above")


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--model", default=None, help="Torch FP32 baseline model [default: the artifacts' model].")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for every subject [default: all cores].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def bench(artifacts, model, threads, batch_size, repeats, as_json) -> None:
    """Benchmark artifacts side by side with the torch FP32 baseline (latency, throughput, memory, size)."""
    from pathlib import Path

    from .bench.run import render_bench, run_bench

    result = run_bench([Path(a) for a in artifacts], model=model, threads=threads, batch_size=batch_size,
                       repeats=repeats)
    click.echo(json.dumps(result, indent=2) if as_json else render_bench(result))


@cli.command()
@click.argument("artifact", type=click.Path())
@click.argument("texts", nargs=-1, required=True)
@click.option("--kind", type=click.Choice(["query", "passage"]), default="query", show_default=True)
@click.option("--output", default="float32", show_default=True,
              type=click.Choice(["float32", "int8", "int8-tanh", "binary", "ubinary"]),
              help="Which output: the float embedding or a compressed output the artifact carries.")
@click.option("--dims", type=click.IntRange(min=1), default=None, help="Matryoshka dims [default: full width].")
def embed(artifact, texts, kind, output, dims) -> None:
    """Embed TEXTS with an artifact; prints one JSON array per text (integers for int8/binary/ubinary)."""
    from .runtime.encoder import load

    enc = load(artifact)
    for vec in enc.encode(list(texts), kind=kind, output=output, dims=dims):
        click.echo(json.dumps([round(float(x), 6) for x in vec] if vec.dtype.kind == "f" else [int(x) for x in vec]))


def _slug(name: str) -> str:
    return name.replace("/", "--").replace("@", "-")


def _register_backend_commands() -> None:
    from .targets.tensorrt.cli import check_trt, engine as engine_cmd

    cli.add_command(check_trt)
    cli.add_command(engine_cmd)


_register_backend_commands()
cli.add_command(__import__("embedc.build.ray_cli", fromlist=["node_resources"]).node_resources)


def main() -> None:
    cli.main(prog_name="embedc")


if __name__ == "__main__":
    main()
