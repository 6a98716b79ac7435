"""`python -m yosoclient.cli` against a real server process: every command, every way it fails."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from tests.loopback import Reply, ScriptedServer, silent_server
from tests.support import DATA, EXPECTED_COUNTS, ROOT, SAMPLE_IMAGES, free_port, serving
from yosoclient.cli import main

API_KEY = "test-key-5b1d"
COMMANDS = ["predict", "predict-dir", "count", "detect", "infer", "models", "health"]


def yosoclient(*args: str, url: str | None = None, cwd: Path = ROOT, env: dict[str, str] | None = None,
               timeout_s: float = 120) -> subprocess.CompletedProcess:
    """The CLI as a user runs it, in its own process."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("YOSO_CLIENT_")}
    full_env |= {"PYTHONPATH": str(ROOT), **(env or {})}
    if url is not None:
        full_env["YOSO_CLIENT_URL"] = url
    return subprocess.run([sys.executable, "-m", "yosoclient.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout_s)


def assert_failed_with_one_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode == 1, result
    assert result.stdout == ""
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("yosoclient: "), result.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


def jpeg_shape(path: Path) -> tuple[int, ...]:
    data = path.read_bytes()
    assert data[:3] == b"\xff\xd8\xff", f"{path} is not a JPEG"
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape


def image_shape(name: str) -> tuple[int, ...]:
    return cv2.imread(str(DATA / name)).shape


# --- every command, succeeding ---

def test_predict_saves_the_annotated_jpeg_quietly(server, tmp_path):
    result = yosoclient("predict", str(DATA / "dog_person_horse.jpg"), "-o", str(tmp_path / "out.jpg"), url=server.url)
    assert result.returncode == 0 and result.stdout == result.stderr == ""
    assert jpeg_shape(tmp_path / "out.jpg") == image_shape("dog_person_horse.jpg")


def test_predict_without_output_writes_into_the_working_directory(server, tmp_path):
    result = yosoclient("--model", "yolov4-tiny", "predict", str(DATA / "car.jpg"), url=server.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert jpeg_shape(tmp_path / "car_yoso.jpg") == image_shape("car.jpg")


def test_predict_to_dash_writes_the_jpeg_to_stdout(server):
    result = subprocess.run([sys.executable, "-m", "yosoclient.cli", "--url", server.url, "predict",
                             str(DATA / "clock.jpg"), "-o", "-"], cwd=ROOT, capture_output=True, timeout=120)
    assert result.returncode == 0 and result.stdout[:3] == b"\xff\xd8\xff"


def parse_summary(stdout: str) -> tuple[dict[str, int], dict[str, float]]:
    """The two tables of predict-dir: objects per label, then images / failures / seconds."""
    counts_table, totals_table = stdout.strip().split("\n\n")
    counts = {}
    for line in counts_table.splitlines()[1:]:
        label, number = re.fullmatch(r"(.+?)\s+(\d+)", line).groups()
        counts[label] = int(number)
    headers, values = (line.split() for line in totals_table.splitlines())
    return counts, dict(zip(headers, map(float, values), strict=True))


def test_predict_dir_annotates_every_sample_image_four_at_a_time(server, tmp_path):
    result = yosoclient("predict-dir", str(DATA), str(tmp_path / "out"), "-j", "4", url=server.url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    for name in SAMPLE_IMAGES:
        assert jpeg_shape(tmp_path / "out" / name) == image_shape(name)
    counts, totals = parse_summary(result.stdout)
    expected = sum((Counter(items) for items in EXPECTED_COUNTS["yolov3-tiny"].values()), Counter())
    assert counts == {**expected, "all objects": sum(expected.values())}
    assert (totals["images"], totals["failures"]) == (len(SAMPLE_IMAGES), 0)
    assert totals["seconds"] > 0


def test_predict_dir_lists_images_the_server_refuses_and_annotates_the_rest(server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "fruits.jpg").write_bytes((DATA / "fruits.jpg").read_bytes())
    (src / "oranges.png").write_bytes(cv2.imencode(".png", cv2.imread(str(DATA / "oranges.jpg")))[1].tobytes())
    (src / "broken.jpg").write_text("not a picture")
    (src / "notes.txt").write_text("ignored: not an image name")
    result = yosoclient("--model", "yolov4-tiny", "predict-dir", str(src), str(tmp_path / "out"), url=server.url)
    assert result.returncode == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["fruits.jpg", "oranges.jpg"]
    counts, totals = parse_summary(result.stdout)
    v4 = EXPECTED_COUNTS["yolov4-tiny"]
    assert counts["orange"] == v4["fruits.jpg"]["orange"] + v4["oranges.jpg"]["orange"]
    assert (totals["images"], totals["failures"]) == (3, 1)
    failures = result.stderr.strip().splitlines()
    assert len(failures) == 2 and "broken.jpg: 415 Unsupported Media Type" in failures[0]
    assert failures[1] == "yosoclient: 1 of 3 images failed"


def test_count_prints_a_table_per_file_and_label(server):
    result = yosoclient("count", str(DATA / "fruits.jpg"), str(DATA / "car2.jpg"), url=server.url)
    assert result.returncode == 0 and result.stderr == ""
    rows = [line.split() for line in result.stdout.strip().splitlines()]
    assert rows[0] == ["file", "label", "count"]
    v3 = EXPECTED_COUNTS["yolov3-tiny"]
    expected = [[str(DATA / name), label, str(n)] for name in ("fruits.jpg", "car2.jpg")
                for label, n in sorted(v3[name].items())]
    assert rows[1:] == expected


def test_count_json_gives_counts_per_file(server):
    names = ["apple.jpg", "apples.jpg", "dog_person_horse.jpg"]
    result = yosoclient("--model", "yolov4-tiny", "count", "--json", *(str(DATA / n) for n in names), url=server.url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {str(DATA / n): EXPECTED_COUNTS["yolov4-tiny"][n] for n in names}


def test_detect_prints_json_by_default_and_csv_on_request(server):
    as_json = yosoclient("--confidence", "0.6", "detect", str(DATA / "car2.jpg"), url=server.url)
    as_csv = yosoclient("--confidence", "0.6", "detect", "--csv", str(DATA / "car2.jpg"), url=server.url)
    assert as_json.returncode == as_csv.returncode == 0
    body = json.loads(as_json.stdout)
    assert (body["model"], body["confidence"], body["width"], body["height"]) == ("yolov3-tiny", 0.6, 275, 183)
    lines = as_csv.stdout.strip().splitlines()
    assert lines[0] == "label,confidence,x1,y1,x2,y2"
    assert [line.split(",") for line in lines[1:]] == [
        [d["label"], repr(d["confidence"]), *map(str, d["box"])] for d in body["detections"]
    ]
    assert len(lines) > 1


def test_models_shows_the_zoo(server):
    table = CliRunner().invoke(main, ["--url", server.url, "models"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.output.strip().splitlines()[1:]}
    assert rows["yolov3-tiny"][1:5] == ["*", "detector", "yes", "yes"]
    assert rows["yolov4-tiny"][1:4] == ["detector", "yes", "yes"]
    as_json = json.loads(CliRunner().invoke(main, ["--url", server.url, "models", "--json"]).output)
    assert as_json["default"] == "yolov3-tiny"
    assert {m["name"] for m in as_json["models"]} >= {"yolov3-tiny", "yolov4-tiny", "yolov3", "yolov4"}


def test_health_prints_ready(server):
    result = yosoclient("health", url=server.url)
    assert (result.returncode, result.stdout, result.stderr) == (0, "ready\n", "")


def test_url_comes_from_the_option_before_the_environment(server):
    result = yosoclient("--url", server.url, "health", url=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    example = result.output.split("Example:")[1]
    assert re.search(rf"^\s+yosoclient .*\b{command}\b", example, re.MULTILINE), result.output


# --- every failure: one line on stderr, exit 1 ---

@pytest.mark.parametrize("command", COMMANDS)
def test_connection_refused_fails_in_one_line(command, tmp_path):
    image = str(DATA / "car.jpg")
    args = {"predict": [image, "-o", str(tmp_path / "o.jpg")], "predict-dir": [str(DATA), str(tmp_path)],
            "count": [image], "detect": [image], "infer": ["doubler", "[1]"]}.get(command, [])
    result = yosoclient(command, *args, url=f"http://127.0.0.1:{free_port()}")
    assert_failed_with_one_line(result, "cannot connect", "Connection refused", "--url")


def test_a_server_that_does_not_answer_in_time_fails_in_one_line():
    with silent_server() as url:
        result = yosoclient("--timeout", "0.5", "count", str(DATA / "car.jpg"), url=url)
    assert_failed_with_one_line(result, "no answer", "within 0.5 s", "--timeout")


def test_an_unknown_model_fails_with_the_servers_detail(server):
    result = yosoclient("--model", "yolov9-huge", "detect", str(DATA / "car.jpg"), url=server.url)
    assert_failed_with_one_line(result, "404 Not Found", "Unknown model 'yolov9-huge'")


def test_a_file_that_is_not_an_image_fails_with_the_servers_detail(server, tmp_path):
    (tmp_path / "notes.jpg").write_text("not a picture")
    result = yosoclient("predict", str(tmp_path / "notes.jpg"), "-o", str(tmp_path / "out.jpg"), url=server.url)
    assert_failed_with_one_line(result, "415 Unsupported Media Type", "not an image")
    assert not (tmp_path / "out.jpg").exists()


@pytest.mark.parametrize("command", ["predict", "count", "detect"])
def test_a_missing_file_fails_before_any_request(command, tmp_path):
    missing = str(tmp_path / "nope.jpg")
    result = yosoclient(command, missing, url=f"http://127.0.0.1:{free_port()}")
    assert_failed_with_one_line(result, f"{missing}: no such file")


def test_count_checks_every_file_before_sending_any(server, tmp_path):
    result = yosoclient("count", str(DATA / "car.jpg"), str(tmp_path / "nope.jpg"), url=server.url)
    assert_failed_with_one_line(result, "nope.jpg: no such file")


def test_a_directory_without_images_fails_in_one_line(server, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "readme.txt").write_text("no pictures here")
    for src in ("empty", "text", "missing"):
        result = yosoclient("predict-dir", str(tmp_path / src), str(tmp_path / "out"), url=server.url)
        assert_failed_with_one_line(result, str(tmp_path / src))


def test_predict_dir_refuses_to_overwrite_its_sources(server, tmp_path):
    (tmp_path / "car.jpg").write_bytes((DATA / "car.jpg").read_bytes())
    result = yosoclient("predict-dir", str(tmp_path), str(tmp_path), url=server.url)
    assert_failed_with_one_line(result, "DEST must differ from SRC")
    assert (tmp_path / "car.jpg").read_bytes() == (DATA / "car.jpg").read_bytes()


def test_health_fails_while_the_server_is_not_ready():
    """A starting server is reached through a loopback script: a real one is ready too soon to catch."""
    with ScriptedServer([Reply(503, {"status": "starting"})]) as fake:
        result = yosoclient("health", url=fake.url)
    assert_failed_with_one_line(result, "is starting, not ready")


def test_the_api_key_from_option_or_environment_goes_out_as_a_bearer_token():
    """The wire contract only: the key check itself belongs to the server's tests."""
    models = {"default": "yolov3-tiny", "models": []}
    with ScriptedServer([Reply(200, models)]) as fake:
        assert yosoclient("--api-key", "from-option", "models", url=fake.url).returncode == 0
        assert yosoclient("models", url=fake.url, env={"YOSO_CLIENT_API_KEY": "from-env"}).returncode == 0
    assert [r.headers["authorization"] for r in fake.received] == ["Bearer from-option", "Bearer from-env"]


@pytest.fixture(scope="module")
def keyed_server(model_store, tmp_path_factory):
    """A real server that requires an API key (YOSO_API_KEY), one worker, one model."""
    env = {"YOSO_API_KEY": API_KEY, "YOSO_WORKERS": "1", "YOSO_PRELOAD_MODELS": "yolov3-tiny"}
    yield from serving(env, tmp_path_factory.mktemp("keyed"))


def test_a_server_requiring_a_key_answers_a_client_that_sends_it(keyed_server):
    from_option = yosoclient("--api-key", API_KEY, "count", "--json", str(DATA / "car2.jpg"), url=keyed_server.url)
    from_env = yosoclient("models", url=keyed_server.url, env={"YOSO_CLIENT_API_KEY": API_KEY})
    assert from_option.returncode == from_env.returncode == 0, from_option.stderr + from_env.stderr
    assert json.loads(from_option.stdout) == {str(DATA / "car2.jpg"): EXPECTED_COUNTS["yolov3-tiny"]["car2.jpg"]}


@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_a_missing_or_wrong_key_fails_with_the_servers_401(keyed_server, key):
    args = ["--api-key", key] if key else []
    result = yosoclient(*args, "detect", str(DATA / "car.jpg"), url=keyed_server.url)
    line = assert_failed_with_one_line(result, "401 Unauthorized")
    assert API_KEY not in line


def test_health_needs_no_key(keyed_server):
    assert yosoclient("health", url=keyed_server.url).returncode == 0


def test_bad_options_are_usage_errors():
    result = CliRunner().invoke(main, ["--confidence", "1.5", "health"])
    assert result.exit_code == 2 and "1.5" in result.output
