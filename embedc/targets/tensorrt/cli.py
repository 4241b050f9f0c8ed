"""``embedc check-trt`` and ``embedc engine``: the TensorRT commands (the lead
registers ``check_trt`` and ``engine`` in ``embedc/cli.py``). Library errors
propagate to the main group, which prints them and exits with their code."""
from __future__ import annotations

from pathlib import Path

import click

from ...errors import UsageError


def _precision_from_artifact(folder: Path) -> str | None:
    from ...fsutil import read_json
    from .profiles import BUILD_FILE

    for name, key in ((BUILD_FILE, "precision"), ("embedc.json", "precision")):
        p = folder / name
        if p.is_file():
            try:
                value = read_json(p).get(key)
            except (OSError, ValueError):
                continue
            if value:
                return str(value)
    return None


def check_trt_command(path: Path, precision: str | None = None):
    """Violations of the ONNX at ``path`` (a file, or an artifact folder's
    model.onnx); ``precision`` defaults to the artifact's build.json/embedc.json."""
    from .check import check_trt_onnx

    path = Path(path)
    model = path / "model.onnx" if path.is_dir() else path
    precision = precision or _precision_from_artifact(model.parent)
    if precision is None:
        raise UsageError(f"cannot tell the precision of {model}", "pass --precision fp16|int8|int4")
    return check_trt_onnx(model, precision)


def engine_command(artifact: Path, timing_cache: Path | None = None) -> dict:
    """Build the engine and record its parity (see :func:`.engine.record_engine`)."""
    from .engine import record_engine

    return record_engine(Path(artifact), timing_cache=timing_cache)


@click.command("check-trt")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int4"]), default=None,
              help="Precision the graph must satisfy. [default: from the artifact's build.json]")
@click.pass_context
def check_trt(ctx: click.Context, model: Path, precision: str | None) -> None:
    """Check that MODEL (an .onnx file or artifact folder) is TensorRT-ready; exit 1 on violations."""
    found = check_trt_command(model, precision)
    for v in found:
        click.echo(str(v))
    if found:
        click.secho(f"{len(found)} TensorRT violation(s) in {model}", fg="red", err=True)
        ctx.exit(1)
    click.echo(f"ok: {model} is TensorRT-ready")


@click.command("engine")
@click.argument("artifact", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Timing cache to load and update. [default: the one named in build.json]")
def engine(artifact: Path, timing_cache: Path | None) -> None:
    """Build the TensorRT engine (model.plan) of ARTIFACT on this GPU host and record its parity."""
    section = engine_command(artifact, timing_cache)
    p = section["parity"]
    click.echo(f"engine: {Path(artifact) / section['engine_file']} ({section['gpu']}, TensorRT {section['tensorrt']}); "
               f"parity mean {p['mean']:.5f} p01 {p['p01']:.5f} min {p['min']:.5f}; "
               f"gates {section['gates']['verdict']}")
