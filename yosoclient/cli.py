"""`yosoclient` (or `python -m yosoclient.cli`): the client library from the shell. Presentation only.

Quiet on success beyond the output asked for; on any failure one line on stderr and exit status 1.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import click

from yosoclient.client import DEFAULT_TIMEOUT_S, DEFAULT_URL, Client, YosoConnectionError, YosoError, YosoTimeout

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
IMAGE_FAILURES = (408, 413, 415, 422, 500, 504)
"""Statuses that condemn one image, not the run: predict-dir records them and goes on."""


class Failure(click.ClickException):
    """One line on stderr, exit status 1."""

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"yosoclient: {self.message}", err=True)


def _explain(error: YosoError) -> str:
    if isinstance(error, YosoConnectionError):
        return f"{error}; is the server running there? Set --url or YOSO_CLIENT_URL."
    if isinstance(error, YosoTimeout):
        return f"{error}; a larger --timeout may help."
    return str(error)


class _Commands(click.Group):
    """Every command's client and file errors become a Failure: one line, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except YosoError as error:
            raise Failure(_explain(error)) from None
        except OSError as error:
            raise Failure(f"{error.filename or 'file'}: {error.strerror or error}") from None


@dataclass
class Session:
    client: Client
    model: str | None
    confidence: float | None

    @property
    def options(self) -> dict[str, Any]:
        return {"model": self.model, "confidence": self.confidence}


def _require_files(paths: tuple[Path, ...]) -> None:
    """Checked before any request, so a typo in the third name does not cost two uploads."""
    for path in paths:
        if not path.is_file():
            raise Failure(f"{path}: no such file" if not path.exists() else f"{path}: not a file")


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    """Left-aligned text, right-aligned numbers, two spaces between columns."""
    cells = [tuple(str(cell) for cell in row) for row in [headers, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [bool(rows) and all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [cell.rjust(w) if num else cell.ljust(w) for cell, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--url", envvar="YOSO_CLIENT_URL", show_envvar=True, default=DEFAULT_URL, show_default=True,
              help="The yoso server.")
@click.option("--model", "-m", metavar="NAME", help="Detector to run (default: the server's default model).")
@click.option("--confidence", "-c", type=click.FloatRange(0, 1, min_open=True),
              help="Keep detections scoring above this, in (0, 1] (default: 0.5).")
@click.option("--timeout", type=click.FloatRange(0, min_open=True), default=DEFAULT_TIMEOUT_S, show_default=True,
              help="Seconds to wait for each answer.")
@click.option("--api-key", envvar="YOSO_CLIENT_API_KEY", show_envvar=True, metavar="KEY",
              help="Sent as 'Authorization: Bearer KEY' when the server requires one.")
@click.pass_context
def main(ctx: click.Context, url: str, model: str | None, confidence: float | None, timeout: float,
         api_key: str | None) -> None:
    """Detect objects in images, or run a JSON model (infer), with a yoso server.

    \b
    Example:
      yosoclient --url http://localhost:8000 --model yolov4-tiny count photo.jpg
    """
    client = ctx.with_resource(Client(url, timeout=timeout, api_key=api_key))
    ctx.obj = Session(client, model, confidence)


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(path_type=Path, allow_dash=True),
              help="Where to write the JPEG; '-' for stdout (default: FILE's name + _yoso.jpg, here).")
@click.pass_obj
def predict(session: Session, file: Path, output: Path | None) -> None:
    """Save FILE with its detections drawn.

    The output is a JPEG of the same size, with a box, label and confidence per object.

    \b
    Example:
      yosoclient predict street.jpg -o street_boxes.jpg
    """
    _require_files((file,))
    jpeg = session.client.predict(file, **session.options)
    if output is not None and str(output) == "-":
        sys.stdout.buffer.write(jpeg)
        sys.stdout.buffer.flush()
        return
    (output or Path(f"{file.stem}_yoso.jpg")).write_bytes(jpeg)


@dataclass
class _Run:
    """What predict-dir reports at the end."""

    images: int = 0
    objects: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[Path, str]] = field(default_factory=list)


def _images_in(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise Failure(f"{directory}: no such directory" if not directory.exists() else f"{directory}: not a directory")
    images = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise Failure(f"{directory}: no images ({', '.join(IMAGE_SUFFIXES)}) in this directory")
    return images


def _output_names(images: list[Path]) -> dict[Path, str]:
    """photo.png -> photo.jpg, unless two inputs share a stem: then photo.png.jpg and photo.jpg.jpg."""
    stems = Counter(image.stem for image in images)
    return {image: f"{image.stem if stems[image.stem] == 1 else image.name}.jpg" for image in images}


@main.command("predict-dir")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("dest", type=click.Path(path_type=Path))
@click.option("--jobs", "-j", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Images in flight at once.")
@click.pass_obj
def predict_dir(session: Session, src: Path, dest: Path, jobs: int) -> None:
    """Annotate every image in SRC into DEST, then print a summary.

    Each output is a JPEG named after its input (photo.png -> DEST/photo.jpg).

    Images that the server refuses are listed and counted as failures; a server that cannot be reached,
    or refuses the model or the key, stops the run.

    \b
    Example:
      yosoclient predict-dir photos/ annotated/ -j 4
    """
    images = _images_in(src)
    if dest.resolve() == src.resolve():
        raise Failure("DEST must differ from SRC: the annotated images would overwrite the originals")
    dest.mkdir(parents=True, exist_ok=True)
    names = _output_names(images)
    client, options = session.client, session.options

    def annotate(image: Path) -> dict[str, int]:
        annotated = client.annotate(image, **options)
        annotated.save(dest / names[image])
        return annotated.counts

    run = _Run(images=len(images))
    started = time.monotonic()
    with ThreadPoolExecutor(jobs) as pool, click.progressbar(
        length=len(images), label="predicting", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        pending: dict[Future[dict[str, int]], Path] = {pool.submit(annotate, image): image for image in images}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    _record(run, pending.pop(future), future)
                    bar.update(1)
        finally:
            for future in pending:
                future.cancel()
    elapsed = time.monotonic() - started
    for image, reason in run.failures:
        click.echo(f"yosoclient: {image}: {reason}", err=True)
    click.echo(_summary(run, elapsed))
    if run.failures:
        raise Failure(f"{len(run.failures)} of {run.images} images failed")


def _record(run: _Run, image: Path, future: Future[dict[str, int]]) -> None:
    try:
        run.objects.update(future.result())
    except YosoError as error:
        if not (isinstance(error, YosoTimeout) or error.status in IMAGE_FAILURES):
            raise
        run.failures.append((image, _explain(error)))


def _summary(run: _Run, elapsed_s: float) -> str:
    rows: list[tuple[Any, ...]] = [(label, count) for label, count in sorted(run.objects.items())]
    rows.append(("all objects", sum(run.objects.values())))
    counts = _table(("label", "objects"), rows)
    totals = _table(("images", "failures", "seconds"), [(run.images, len(run.failures), round(elapsed_s, 2))])
    return f"{counts}\n\n{totals}"


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help='Print {"FILE": {"label": count}} instead of a table.')
@click.pass_obj
def count(session: Session, files: tuple[Path, ...], as_json: bool) -> None:
    """Count the objects of each label in every FILE.

    \b
    Example:
      yosoclient count fruits.jpg oranges.jpg
      yosoclient --confidence 0.3 count --json *.jpg
    """
    _require_files(files)
    counts = {str(file): session.client.count_objects(file, **session.options) for file in files}
    if as_json:
        click.echo(json.dumps(counts, indent=2))
        return
    rows = [(file, label, n) for file, items in counts.items() for label, n in sorted(items.items() or [("-", 0)])]
    click.echo(_table(("file", "label", "count"), rows))


@main.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json/--csv", "as_json", default=True,
              help="JSON with image size and timing (default), or CSV rows label,confidence,x1,y1,x2,y2.")
@click.pass_obj
def detect(session: Session, file: Path, as_json: bool) -> None:
    """Print the detections in FILE, as JSON or CSV.

    Each detection has a label, a confidence and a box: x1, y1, x2, y2 in pixels.

    \b
    Example:
      yosoclient --model yolov4-tiny detect car.jpg --csv
    """
    _require_files((file,))
    result = session.client.detect(file, **session.options)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(("label", "confidence", "x1", "y1", "x2", "y2"))
    for detection in result.detections:
        writer.writerow((detection.label, detection.confidence, *detection.box))


@main.command()
@click.argument("model")
@click.argument("instances")
@click.pass_obj
def infer(session: Session, model: str, instances: str) -> None:
    """Print the predictions of MODEL, a JSON model, for INSTANCES, a JSON list (- reads it from stdin).

    Uses KServe's V1 protocol: POST /v1/models/MODEL:predict.

    \b
    Example:
      yosoclient infer doubler '[1, 2, 3]'
    """
    try:
        parsed = json.loads(sys.stdin.read() if instances == "-" else instances)
    except json.JSONDecodeError as error:
        raise Failure(f"INSTANCES is not JSON: {error}") from None
    if not isinstance(parsed, list):
        raise Failure("INSTANCES must be a JSON list, one entry per prediction")
    click.echo(json.dumps(session.client.infer(model, parsed)))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the server's JSON instead of a table.")
@click.pass_obj
def models(session: Session, as_json: bool) -> None:
    """List the server's models (* marks the default).

    Shows whether each is installed, loaded, and by how many worker processes.

    \b
    Example:
      yosoclient models
    """
    info = session.client.models()
    if as_json:
        click.echo(json.dumps(asdict(info), indent=2))
        return
    rows = [
        (f"{m.name}{' *' if m.name == info.default else ''}", m.kind, "yes" if m.installed else "no",
         "yes" if m.loaded else "no", m.workers_loaded, f"{m.download_bytes / 1e6:.0f} MB")
        for m in info.models
    ]
    click.echo(_table(("model", "kind", "installed", "loaded", "workers", "download"), rows))


@main.command()
@click.pass_obj
def health(session: Session) -> None:
    """Print "ready" if the server takes images; else fail.

    Exits 1 while the server loads its models or drains, and when it cannot be reached.

    \b
    Example:
      yosoclient --url http://localhost:8000 health && echo up
    """
    state = session.client.health()
    if not state.ready:
        raise Failure(f"the server at {session.client.base_url} is {state.status}, not ready")
    click.echo(state.status)


if __name__ == "__main__":
    main()
