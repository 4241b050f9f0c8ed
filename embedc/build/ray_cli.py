"""``embedc node-resources``: the custom resources a Ray worker on this machine
should advertise, as the JSON ``ray start --resources`` takes."""
from __future__ import annotations

import json

import click


@click.command("node-resources")
@click.option("--no-devices", is_flag=True, help="CPU kernels only (skip the NVIDIA / OpenVINO device probes).")
def node_resources(no_devices: bool) -> None:
    """Print this machine's Ray resources: ray start --resources "$(embedc node-resources)"."""
    from .resources import node_resources as offered

    kw = {"gpu_ccs": [], "intel_devices": []} if no_devices else {}
    click.echo(json.dumps(offered(**kw), sort_keys=True))
