"""`--metrics-file`: Prometheus text written at the end of every run, however it ended."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

from helpers import SandboxServer, run_args, run_cli, start_run, wait_for_arrivals, write_csv
from prometheus_client.parser import text_string_to_metric_families


def metrics(path: Path) -> dict[str, float]:
    """Every sample, parsed by prometheus_client's own parser: name{labels} -> value."""
    samples = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def _run(tmp_path: Path, server: SandboxServer, ledger: str, *args: str) -> int:
    args = ("--metrics-file", "prom/sync.prom", *args)
    return run_cli(*run_args(server, *args, ledger=ledger), cwd=tmp_path).code


def test_clean_run_then_a_failed_one_keeps_the_last_success(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    before = time.time()
    assert _run(tmp_path, sandbox, "one.csv") == 0
    first = metrics(tmp_path / "prom/sync.prom")
    assert first["sync_worker_rows{status=ok}"] == 2
    assert first["sync_worker_rows{status=failed}"] == 0
    assert first["sync_worker_requests_total"] == 2
    assert first["sync_worker_rate_limited_total"] == 0
    assert first["sync_worker_exit_code"] == 0
    assert before <= first["sync_worker_last_success_timestamp_seconds"] <= time.time()
    assert first["sync_worker_last_run_timestamp_seconds"] >= before
    assert first["sync_worker_run_duration_seconds"] > 0
    assert [p.name for p in (tmp_path / "prom").iterdir()] == ["sync.prom"]  # no temporary left

    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[900000001, "Ghost"]])
    assert _run(tmp_path, sandbox, "two.csv") == 1  # 404: a failed row
    second = metrics(tmp_path / "prom/sync.prom")
    assert second["sync_worker_exit_code"] == 1
    assert second["sync_worker_rows{status=failed}"] == 1
    assert (
        second["sync_worker_last_success_timestamp_seconds"]
        == first["sync_worker_last_success_timestamp_seconds"]
    )
    assert (
        second["sync_worker_last_run_timestamp_seconds"]
        > first["sync_worker_last_run_timestamp_seconds"]
    )


def test_a_signal_and_a_refused_input_still_write_metrics(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(
        tmp_path / "in.csv", ["interview_id", "contact_name"], [[i, f"N{i}"] for i in range(1, 41)]
    )
    run = start_run(
        tmp_path,
        [
            "run",
            "in.csv",
            "--base-url",
            sandbox.base_url,
            "--state",
            "state.sqlite",
            "--ledger",
            "l.csv",
            "--rate-limit",
            "10",
            "--rate-period",
            "1",
            "--metrics-file",
            "m.prom",
        ],
    )
    wait_for_arrivals(sandbox, 3)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=20) == 143
    stopped = metrics(tmp_path / "m.prom")
    assert stopped["sync_worker_exit_code"] == 143
    assert stopped["sync_worker_rows{status=not_attempted}"] > 0
    assert stopped["sync_worker_last_success_timestamp_seconds"] == 0  # never succeeded

    (tmp_path / "bad.csv").write_text("name\nAna\n", encoding="utf-8")
    code = run_cli(
        "run",
        "bad.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--metrics-file",
        "m.prom",
        cwd=tmp_path,
    ).code
    assert code == 2
    assert metrics(tmp_path / "m.prom")["sync_worker_exit_code"] == 2


def test_a_metrics_file_that_cannot_be_written_stops_before_sending(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    (tmp_path / "prom").write_text("a file where a folder should be\n")
    result = run_cli(
        "run",
        "in.csv",
        "--base-url",
        sandbox.base_url,
        "--state",
        "state.sqlite",
        "--metrics-file",
        "prom/sync.prom",
        cwd=tmp_path,
    )
    assert result.code == 2 and "Traceback" not in result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.strip()]
    assert "metrics file prom/sync.prom: cannot be written: prom is a file, not a folder" in line
    assert sandbox.requests() == []


def families(path: Path) -> dict[str, str]:
    """Metric family name -> its type."""
    text = path.read_text(encoding="utf-8")
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_every_metric_is_a_gauge_and_none_is_created(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """Per-run values: a counter that starts at 0 every run misleads rate(), and adds _created."""
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"], [2, "Bo"]])
    assert _run(tmp_path, sandbox, "one.csv") == 0
    text = (tmp_path / "prom/sync.prom").read_text()
    assert "_created" not in text
    assert set(families(tmp_path / "prom/sync.prom").values()) == {"gauge"}
    assert "# TYPE sync_worker_requests_total gauge" in text  # the documented names stay
    assert "# TYPE sync_worker_rate_limited_total gauge" in text


def test_429s_are_requests_too(
    tmp_path: Path, sandbox_factory: Callable[..., SandboxServer]
) -> None:
    server = sandbox_factory("--rate-limit", "5", "--rate-period", "1")
    write_csv(
        tmp_path / "in.csv", ["interview_id", "contact_name"], [[i, f"N{i}"] for i in range(1, 13)]
    )
    assert _run(tmp_path, server, "one.csv", "--rate-limit", "20") == 0
    values = metrics(tmp_path / "prom/sync.prom")
    log = server.requests()
    refused = sum(1 for r in log if r["status"] == 429)
    assert refused > 0
    assert values["sync_worker_rate_limited_total"] == refused
    assert values["sync_worker_requests_total"] == len(log)  # every request the server answered


def test_a_config_error_writes_exit_code_2_and_keeps_the_last_success(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    assert _run(tmp_path, sandbox, "one.csv") == 0
    success = metrics(tmp_path / "prom/sync.prom")["sync_worker_last_success_timestamp_seconds"]
    # a variable name that cannot be one: refused before anything is read
    assert _run(tmp_path, sandbox, "two.csv", "--api-key-env", "9-not-a-name") == 2
    after = metrics(tmp_path / "prom/sync.prom")
    assert after["sync_worker_exit_code"] == 2
    assert after["sync_worker_last_success_timestamp_seconds"] == success
    assert sandbox.requests()[-1]["id"] == "1" and len(sandbox.requests()) == 1


def test_a_broken_config_file_still_reports_to_its_metrics_path(
    tmp_path: Path, sandbox: SandboxServer
) -> None:
    """The file's [metrics] path is known even when another of its values is not usable."""
    write_csv(tmp_path / "in.csv", ["interview_id", "contact_name"], [[1, "Ana"]])
    (tmp_path / "sync.toml").write_text('[api]\ntier = "platinum"\n[metrics]\npath = "m.prom"\n')
    result = run_cli(
        "run", "in.csv", "--config", "sync.toml", "--base-url", sandbox.base_url, cwd=tmp_path
    )
    assert result.code == 2
    assert metrics(tmp_path / "m.prom")["sync_worker_exit_code"] == 2
