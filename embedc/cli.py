"""The ``embedc`` command line: parse, call the library, map errors to exit
codes (0 ok, 1 error, 2 usage, 3 parity gate failed). Heavy imports stay
inside the commands so ``--help`` is fast."""
from __future__ import annotations

import json
import logging
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
                  "nncf", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(package_name="embedc")
def cli(quiet: bool, verbose: bool) -> None:
    """Compile text-embedding models into parity-checked deployment artifacts."""
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
def export(model, trust_remote_code, allow_pickle, out, opset, force, min_cosine, max_abs_diff) -> None:
    """Export the FP32 reference ONNX (pooled + normalized) and validate it against PyTorch."""
    from pathlib import Path

    from .exporter import ValidationGate, export_reference
    from .models import DEFAULT_MODEL, resolve_model

    source = resolve_model(model or DEFAULT_MODEL, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    out_dir = Path(out) if out else Path("artifacts") / _slug(source.name) / "export"
    result = export_reference(source, out_dir, opset=opset, force=force,
                              gate=ValidationGate(min_cosine=min_cosine, max_abs_diff=max_abs_diff))
    v = result.meta["validation"]
    click.echo(f"exported {source.name} -> {result.path}")
    click.echo(f"validation vs PyTorch on {v['texts']} multilingual texts (batch 1/3/8, short/128/512 tokens): "
               f"mean cosine {v['mean_cosine']:.7f}, min cosine {v['min_cosine']:.7f}, "
               f"max abs diff {v['max_abs_diff']:.2e}: PASS")


def _slug(name: str) -> str:
    return name.replace("/", "--").replace("@", "-")


def main() -> None:
    cli.main(prog_name="embedc")


if __name__ == "__main__":
    main()
