"""`python -m bench.ceiling`: the most of the raw limit that any server can reach in `python -m bench` on this
machine, since the benchmark's clients share the cores with the model and every HTTP request costs some CPU.

The raw model (bench.raw.RawNets, in the best layout) runs while the benchmark's own loads are sent to the cheapest
HTTP front there is (bench.bare_app: uvicorn as yoso runs it, reading each upload and answering with no model).
Its images/s are compared with the raw runs just before and after. In the closed loops the front answers each
request `clients / raw limit` seconds after it came, so requests come as fast as they would to a server at the raw
limit. In the open loop at 2 x it answers at once. What lies between this ratio and the benchmark's for the same
load is what yoso does beyond HTTP: the queue, admission, messages to the workers, metrics and logs.
"""

from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from bench.load import LoadResult, closed_loop, open_loop
from bench.options import images_option, model_option, rounds_option
from bench.raw import RawNets, best, every_layout, installed_files
from tests.live_server import ROOT, free_port, poll_until

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Load:
    label: str
    clients: int  # plain keep-alive clients; 0: open-loop Poisson arrivals at `times` x the raw limit
    times: float = 0.0
    target: float = 0.95  # what `python -m bench` asks of a server under this load, x the raw limit

    def run(self, port: int, images: list[Path], raw_limit: float, seconds: float,
            alongside: Callable[[], object]) -> LoadResult:
        if self.clients:
            return closed_loop("127.0.0.1", port, f"/after/{self.clients / raw_limit:.4f}", images, self.clients,
                               seconds, alongside=alongside)
        return open_loop("127.0.0.1", port, "/after/0", images, self.times * raw_limit, seconds, alongside=alongside)


LOADS = (Load("plain, 4 clients", 4), Load("plain, 8 clients", 8), Load("plain, 32 clients", 32),
         Load("open loop, 2 x raw", 0, times=2.0, target=0.9))


def _answers(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
    try:
        connection.request("POST", "/after/0", b"")
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


@click.command()
@model_option
@images_option
@click.option("--seconds", default=6.0, show_default=True, help="Seconds of each raw run.")
@rounds_option
def main(model: str, image_dir: Path, seconds: float, rounds: int) -> None:
    """What the raw model keeps of the cores beside the benchmark's loads and a bare HTTP front.

    Example: python -m bench.ceiling --rounds 3 --seconds 6
    """
    files = installed_files(model)
    image_paths = sorted(image_dir.glob("*.jpg"))
    images = [path.read_bytes() for path in image_paths]
    cores = os.cpu_count() or 1
    layout = best(every_layout(model, files, images, cores, seconds))
    click.echo(f"yoso bench.ceiling: {model}, {len(images)} images, {cores} cores, raw model as {layout.layout}, "
               f"{seconds:g} s a run, {rounds} rounds")
    port = free_port()
    front = subprocess.Popen([sys.executable, "-m", "bench.bare_app", str(port)], cwd=ROOT)
    ratios: dict[str, list[float]] = {load.label: [] for load in LOADS}
    try:
        if not poll_until(lambda: _answers(port), START_TIMEOUT_S):
            raise click.ClickException(f"the bare HTTP front did not answer within {START_TIMEOUT_S:g} s")
        with RawNets(model, files, images, layout.processes, layout.threads) as raw:
            for n in range(rounds):
                for load in LOADS:
                    before, beside = raw.run(seconds).images_per_s, []
                    result = load.run(port, image_paths, before, seconds + 1,  # its window holds the raw run
                                      alongside=lambda: beside.append(raw.run(seconds).images_per_s))
                    after = raw.run(seconds).images_per_s
                    ratios[load.label].append(beside[0] / statistics.mean((before, after)))
                    click.echo(f"round {n + 1}, {load.label:20s} raw {before:5.1f} | beside {beside[0]:5.1f} while "
                               f"the front answered {result.images_per_s:5.1f}/s | raw {after:5.1f} img/s: "
                               f"{ratios[load.label][-1]:.3f} x raw")
    finally:
        front.terminate()
        front.wait()
    click.echo("\n| load | raw model beside it, x raw limit | rounds | yoso's target in `python -m bench` |")
    click.echo("|---|---|---|---|")
    for load in LOADS:
        rounds_text = " / ".join(f"{ratio:.3f}" for ratio in ratios[load.label])
        click.echo(f"| {load.label} | {statistics.median(ratios[load.label]):.3f} | {rounds_text} "
                   f"| >= {load.target:g} |")


if __name__ == "__main__":
    main()
