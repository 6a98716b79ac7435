"""Many concurrent requests over both models give exactly the serial results."""

from __future__ import annotations

import asyncio
import itertools

import httpx

from tests.support import EXPECTED_COUNTS, SAMPLE_IMAGES, image_bytes


async def _detect_all(url: str, jobs: list[tuple[str, str]]) -> list[dict]:
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as http:
        responses = await asyncio.gather(*(
            http.post("/detect", params={"model": model}, files={"file": (image, image_bytes(image))})
            for model, image in jobs
        ))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    return [r.json()["detections"] for r in responses]


def test_48_concurrent_requests_over_both_models_equal_the_serial_results(server, client):
    jobs = list(itertools.product(sorted(EXPECTED_COUNTS), SAMPLE_IMAGES)) * 2
    serial = {
        (model, image): client.post("/detect", params={"model": model}, files={"file": (image, image_bytes(image))})
        .json()["detections"]
        for model, image in set(jobs)
    }
    concurrent = asyncio.run(_detect_all(server.url, jobs))
    assert len(concurrent) == 48
    for job, detections in zip(jobs, concurrent):
        assert detections == serial[job], job
