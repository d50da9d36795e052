"""deploy/: the crontab line, the systemd service and timer, the Kubernetes CronJob. Each parses
as its own tool reads it, and names only options `sync-worker` has (asked of the click command
itself), with the key from a file or a Secret, a metrics file and a ping URL."""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from sync_worker.cli.main import main

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def options_of(command: str) -> set[str]:
    assert isinstance(main, click.Group)
    params = main.commands[command].params
    return {
        name for p in params if isinstance(p, click.Option) for name in p.opts + p.secondary_opts
    }


def check_invocation(argv: list[str]) -> dict[str, str]:
    """`argv` from `sync-worker` on: a command, and options it has. Returns option -> value
    (the token after it, for those that take one)."""
    assert isinstance(main, click.Group)
    start = next(
        i
        for i, word in enumerate(argv[:-1])
        if word.endswith("sync-worker") and argv[i + 1] in main.commands
    )
    command, rest = argv[start + 1], argv[start + 2 :]
    known = options_of(command)
    assert isinstance(main, click.Group)
    flags = {
        name
        for p in main.commands[command].params
        if isinstance(p, click.Option) and p.is_flag
        for name in p.opts + p.secondary_opts
    }
    given: dict[str, str] = {}
    words = iter(rest)
    for word in words:
        if not word.startswith("--"):
            continue
        name = word.split("=", 1)[0]
        assert name in known, f"{name} is not an option of sync-worker {command}"
        assert name != "--api-key", "the key never goes on the command line"
        given[name] = "" if name in flags else next(words)
    assert "--api-key-file" in given or "HINDSIGHT_API_KEY" in " ".join(argv)
    assert "--metrics-file" in given and given["--ping-url"].startswith("https://")
    return given


def crontab_commands(text: str) -> list[str]:
    """The command of each job line (five time fields, then the command), as cron runs it: an
    unescaped % would end the command there, `\\%` is a plain %."""
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or re.match(r"^\w+=", line):
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, line
        for field in fields[:5]:
            assert re.fullmatch(r"[\d*,/-]+", field), f"not a cron time field: {field}"
        assert not re.search(r"(?<!\\)%", fields[5]), "an unescaped % ends a cron command"
        jobs.append(fields[5].replace("\\%", "%"))
    return jobs


def test_the_crontab_line() -> None:
    [command] = crontab_commands((DEPLOY / "crontab").read_text())
    argv = shlex.split(command)
    given = check_invocation(argv)
    assert given["--max-changes"] == "20%"
    assert given["--log-format"] == "json"


def unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys keep their case
    parser.read_string((DEPLOY / name).read_text())
    return parser


def test_the_systemd_service_and_timer() -> None:
    service, timer = unit("sync-worker.service"), unit("sync-worker.timer")
    assert service["Service"]["Type"] == "oneshot"
    argv = shlex.split(service["Service"]["ExecStart"].replace("%%", "%"))
    given = check_invocation(argv)
    assert given["--api-key-file"].startswith("${CREDENTIALS_DIRECTORY}/")
    credential = given["--api-key-file"].rsplit("/", 1)[-1]
    assert service["Service"]["LoadCredential"].startswith(f"{credential}:")
    assert not re.search(r"%[^%]", service["Service"]["ExecStart"].replace("%%", "")), (
        "a lone % is a systemd specifier"
    )
    assert timer["Timer"]["Unit"] == "sync-worker.service" and timer["Timer"]["OnCalendar"]
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_systemd_analyze_verify_accepts_them(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze on this machine (the INI test above still runs)")
    for name in ("sync-worker.service", "sync-worker.timer"):
        text = (DEPLOY / name).read_text()
        # verify checks the program exists: this machine's own sync-worker stands in for it
        here = str(Path(sys.executable).with_name("sync-worker"))
        (tmp_path / name).write_text(text.replace("/opt/sync-worker/.venv/bin/sync-worker", here))
    result = subprocess.run(
        ["systemd-analyze", "verify", "sync-worker.service", "sync-worker.timer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [x for x in result.stderr.splitlines() if "sync-worker" in x]
    assert result.returncode == 0 and not problems, result.stderr


def documents() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "cronjob.yaml").read_text()) if d]


def test_the_kubernetes_cronjob() -> None:
    [job] = [d for d in documents() if d["kind"] == "CronJob"]
    claims = {d["metadata"]["name"] for d in documents() if d["kind"] == "PersistentVolumeClaim"}
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    [container] = pod["containers"]
    given = check_invocation([*container["command"], *container["args"]])
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}

    def volume_of(path: str) -> dict[str, Any]:
        mount = max((m for m in mounts if path.startswith(m + "/")), key=len)
        return volumes[mounts[mount]]

    key_volume = volume_of(given["--api-key-file"])
    assert key_volume["secret"]["secretName"]  # the key: a Secret mounted as a file
    state_volume = volume_of(given["--state"])
    assert state_volume["persistentVolumeClaim"]["claimName"] in claims  # state survives the pod
    assert volume_of(given["--ledger"]) is state_volume
    assert given["--max-changes"] == "20%"
