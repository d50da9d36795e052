"""Every option in one table: the command line's flags, the Python keywords and the config file's
keys are all made from `OPTIONS`.

One entry says everything about one option:

    Option(
        "rate_period",                  # the Python keyword, and click's parameter name
        "--rate-period",                # the flag (None: no flag, e.g. `api_key`)
        "Seconds the limit is counted in [default: 60].",   # help, on the command line
        Kind.POSITIVE_NUMBER,           # how the flag parses; which check a keyword gets
        positive_number,                # the check of the config key (and of the keyword)
        setting="rate_period_s",        # the Settings field it sets (None: a per-run option)
        file_key=("api", "rate_period_s"),  # where the config file sets it (None: nowhere)
        commands=ALL_RUNS,              # the commands (and their Python functions) taking it
    )

A new option is one entry here: a flag on the commands it names (cli/main.py adds it to each),
a keyword of their Python functions, checked (commands/api.py), and, with a `file_key`, a key of
the config file (config.py), its section made if new. What the option does is then the
setting's (or the RunOptions field's) to say. An option that lives only in the config file (a
`[guard]` key, `[input] sheet`) has no flag and no commands; one only Python can give (`api_key`:
a key on the command line would show in `ps`) has no flag.

The table is ordered as the config file's sections and keys are listed in messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from sync_worker.settings.checks import (
    Validator,
    any_text,
    api_key,
    delimiter,
    encoding,
    env_name,
    history_days,
    log_format,
    max_changes,
    non_negative_int,
    path,
    ping_url,
    positive_int,
    positive_number,
    python_bool,
    text,
    text_list,
    tier_name,
    toml_bool,
)
from sync_worker.settings.network import check_proxy

# Who reads a message: the command line names flags (`--state`), Python keywords (`state=`).
Surface = Literal["cli", "python"]
Command = Literal["run", "plan", "validate", "revert"]


class Kind(Enum):
    """How the command line reads a flag's value, and which check a Python keyword gets."""

    TEXT = "text"
    FILE = "file"  # a file to read: click refuses a folder
    PATH = "path"  # a file to write: a folder gets the writer's own one-line message
    POSITIVE_INT = "positive int"
    NON_NEGATIVE_INT = "non-negative int"
    POSITIVE_NUMBER = "positive number"  # finite: click lets nan and inf through
    TIER = "tier"
    LOG_FORMAT = "log format"
    FLAG = "flag"  # `--force`: True when given
    SWITCH = "switch"  # `--merge/--no-merge`: None when neither is given
    NEGATED_FLAG = "negated flag"  # `--no-progress`: the keyword (`progress`) is False when given


BOOLEAN_KINDS = (Kind.FLAG, Kind.SWITCH, Kind.NEGATED_FLAG)
PLANNING: frozenset[Command] = frozenset({"run", "plan", "validate"})
ALL_RUNS: frozenset[Command] = frozenset({"run", "plan", "validate", "revert"})
SENDING: frozenset[Command] = frozenset({"run", "revert"})
NONE: frozenset[Command] = frozenset()


@dataclass(frozen=True)
class Option:
    """One option: its names on each surface, its check, and where its value goes."""

    keyword: str  # the Python keyword and click's parameter name (file-only: the setting's)
    flag: str | None  # "--rate-limit", "--merge/--no-merge"; None: not on the command line
    help: str
    kind: Kind = Kind.TEXT
    check: Validator = text  # the config key's check; a keyword's unless its kind decides
    setting: str | None = None  # the Settings field it sets; None: a RunOptions field
    file_key: tuple[str, str] | None = None  # (section, key) in the config file
    commands: frozenset[Command] = NONE
    default: Any = None  # on the command line (None: not given; a lower layer decides)
    python_default: Any = None  # as a Python keyword
    help_for: tuple[tuple[Command, str], ...] = ()  # another help text on some commands
    metavar: str | None = None  # how --help shows the value (None: click's, from the kind)

    def help_on(self, command: Command) -> str:
        return dict(self.help_for).get(command, self.help)

    @property
    def keyword_check(self) -> Validator:
        """What a value given from Python must be: a flag is a bool, a path a str or Path."""
        if self.kind in BOOLEAN_KINDS:
            return python_bool
        if self.kind in (Kind.FILE, Kind.PATH):
            return path
        return self.check

    def named(self, surface: Surface) -> str:
        """How a message names the option to whoever gave it."""
        if surface == "python" or self.flag is None:
            return f"{self.keyword}="
        return self.flag


OPTIONS: tuple[Option, ...] = (
    Option(
        "config",
        "--config",
        "TOML config file [default: config/sync.toml if it exists].",
        Kind.FILE,
        commands=ALL_RUNS,
    ),
    Option(
        "base_url",
        "--base-url",
        "API base URL [default: https://app.usehindsight.com/api/v1]; it also picks the "
        "default state (each API has its own).",
        setting="base_url",
        file_key=("api", "base_url"),
        commands=ALL_RUNS,
    ),
    Option(
        "tier",
        "--tier",
        "Plan tier: 60 / 300 / 1000 requests per minute [default: growth].",
        Kind.TIER,
        tier_name,
        setting="tier",
        file_key=("api", "tier"),
        commands=ALL_RUNS,
    ),
    Option(
        "rate_limit",
        "--rate-limit",
        "Requests per rate period; overrides the tier.",
        Kind.POSITIVE_INT,
        positive_int,
        setting="rate_limit",
        file_key=("api", "rate_limit"),
        commands=ALL_RUNS,
    ),
    Option(
        "rate_period",
        "--rate-period",
        "Seconds the limit is counted in [default: 60].",
        Kind.POSITIVE_NUMBER,
        positive_number,
        setting="rate_period_s",
        file_key=("api", "rate_period_s"),
        commands=ALL_RUNS,
    ),
    Option(
        "concurrency",
        "--concurrency",
        "Fix the requests in flight at N [default: adaptive, enough for the limit at the "
        "latency the API shows, up to [api] max_concurrency (256)].",
        Kind.POSITIVE_INT,
        positive_int,
        setting="concurrency",
        file_key=("api", "concurrency"),
        commands=SENDING,
    ),
    Option(
        "max_concurrency",
        None,
        "The most requests in flight the adaptive pool grows to.",
        check=positive_int,
        setting="max_concurrency",
        file_key=("api", "max_concurrency"),
    ),
    Option(
        "timeout_s",
        None,
        "Seconds a request may take.",
        check=positive_number,
        setting="timeout_s",
        file_key=("api", "timeout_s"),
    ),
    Option(
        "max_retries",
        None,
        "Tries after the first for a 5xx, a timeout or a dropped connection.",
        check=non_negative_int,
        setting="max_retries",
        file_key=("api", "max_retries"),
    ),
    Option(
        "backoff_base_s",
        None,
        "The first retry's wait; each later one doubles it.",
        check=positive_number,
        setting="backoff_base_s",
        file_key=("api", "backoff_base_s"),
    ),
    Option(
        "max_outage",
        "--max-outage",
        "Seconds the API may not answer at all before the run gives up (exit 3; a re-run "
        "resumes) [default: 300].",
        Kind.POSITIVE_NUMBER,
        positive_number,
        setting="max_outage_s",
        file_key=("api", "max_outage_s"),
        commands=SENDING,
    ),
    Option(
        "proxy",
        None,
        "An http(s) proxy for the API [default: HTTPS_PROXY / HTTP_PROXY / NO_PROXY].",
        check=check_proxy,
        setting="proxy",
        file_key=("api", "proxy"),
    ),
    Option(
        "ca_bundle",
        None,
        "PEM file of the CA certificates to trust [default: the system's].",
        setting="ca_bundle",
        file_key=("api", "ca_bundle"),
    ),
    Option(
        "api_key_env",
        "--api-key-env",
        "Environment variable holding the API key [default: HINDSIGHT_API_KEY].",
        check=env_name,
        setting="api_key_env",
        file_key=("api", "api_key_env"),
        commands=SENDING,
    ),
    Option(
        "api_key",
        None,  # never a flag: it would show in `ps`
        "The API key itself (from Python only).",
        check=api_key,
        commands=SENDING,
    ),
    Option(
        "api_key_file",
        "--api-key-file",
        "Read the API key from this file instead.",
        Kind.FILE,
        commands=SENDING,
    ),
    Option(
        "encoding",
        None,
        "The CSV files' encoding [default: UTF-8, else cp1252 with a warning].",
        check=encoding,
        setting="encoding",
        file_key=("input", "encoding"),
    ),
    Option(
        "delimiter",
        None,
        "The CSV files' delimiter [default: found from the header].",
        check=delimiter,
        setting="delimiter",
        file_key=("input", "delimiter"),
    ),
    Option(
        "sheet",
        None,
        "The XLSX sheet to read, by name [default: the first].",
        setting="sheet",
        file_key=("input", "sheet"),
    ),
    Option(
        "merge",
        "--merge/--no-merge",
        "Merge new context into the contact's existing notes [default: off].",
        Kind.SWITCH,
        toml_bool,
        setting="merge",
        file_key=("merge", "enabled"),
        commands=PLANNING,
    ),
    Option(
        "resolve_contacts",
        None,
        "Ask the API which contact each interview belongs to (GET /interviews/{id}, once per "
        "interview) instead of trusting the export's emails.",
        check=toml_bool,
        setting="resolve_contacts",
        file_key=("merge", "resolve_contacts"),
    ),
    Option(
        "merge_separator",
        None,
        "What goes between existing and new text [default: a blank line].",
        check=any_text,
        setting="merge_separator",
        file_key=("merge", "separator"),
    ),
    Option(
        "append_keys",
        None,
        "Context keys whose text is appended, not replaced.",
        check=text_list,
        setting="append_keys",
        file_key=("merge", "append_keys"),
    ),
    Option(
        "existing_notes",
        "--existing-notes",
        "CSV, XLSX or Parquet of current notes (interview_id or contact_email, notes); "
        "implies --merge.",
        Kind.FILE,
        commands=PLANNING,
    ),
    Option(
        "ledger",
        "--ledger",
        "Ledger file, .csv or .jsonl; {run_id} and {date} are filled in [default: "
        "ledgers/sync-{run_id}.csv; for revert ledgers/revert-{run_id}.csv].",
        Kind.PATH,
        setting="ledger_path",
        file_key=("ledger", "path"),
        commands=SENDING,
    ),
    Option(
        "state",
        "--state",
        "State database [default: state/sync-state.sqlite for the vendor's API, "
        "state/sync-state-<host>-<port>.sqlite for another base URL].",
        Kind.PATH,
        setting="state_path",
        file_key=("state", "path"),
        commands=ALL_RUNS,
    ),
    Option(
        "history_days",
        None,
        "Days the state keeps the versions of the fields runs changed.",
        check=history_days,
        setting="history_days",
        file_key=("state", "history_days"),
    ),
    Option(
        "metrics_file",
        "--metrics-file",
        "Write Prometheus metrics of the run here (node_exporter textfile).",
        Kind.FILE,
        setting="metrics_path",
        file_key=("metrics", "path"),
        commands=SENDING,
    ),
    Option(
        "ping_url",
        "--ping-url",
        "A healthchecks-style monitor: URL/start when sending begins, URL/<exit code> at the "
        "end with the summary.",
        check=ping_url,
        setting="ping_url",
        file_key=("metrics", "ping_url"),
        commands=SENDING,
        metavar="URL",
    ),
    Option(
        "max_changes",
        "--max-changes",
        "Refuse before sending (exit 2) a run that would send more than N requests, or more "
        "than P% of its input rows.",
        check=max_changes,
        setting="max_changes",
        file_key=("guard", "max_changes"),
        commands=PLANNING,
        metavar="N|P%",
    ),
    Option(
        "allow_unknown_notes",
        "--allow-unknown-notes",
        "Let a merged run overwrite the notes of more than [guard] max_unknown_notes (100) "
        "contacts whose current notes it does not know.",
        Kind.FLAG,
        setting="allow_unknown_notes",
        commands=PLANNING,
        default=False,
        python_default=False,
    ),
    Option(
        "max_unknown_notes",
        None,
        "The most contacts whose unknown notes a merged run may overwrite.",
        check=non_negative_int,
        setting="max_unknown_notes",
        file_key=("guard", "max_unknown_notes"),
    ),
    Option(
        "first_rejections",
        None,
        "A run whose first N answers all refuse rows with one 400/404 code stops (0: off).",
        check=non_negative_int,
        setting="first_rejections",
        file_key=("guard", "first_rejections"),
    ),
    Option(
        "force",
        "--force",
        "Send rows even when unchanged since the last successful send.",
        Kind.FLAG,
        commands=ALL_RUNS,
        default=False,
        python_default=False,
        help_for=(("revert", "Put back fields a later run changed again too."),),
    ),
    Option(
        "dry_run",
        "--dry-run",
        "Do everything but send; ledger status dry_run.",
        Kind.FLAG,
        commands=SENDING,
        default=False,
        python_default=False,
    ),
    Option(
        "max_rows",
        "--max-rows",
        "Send at most N requests (a trial run); the rest are not_attempted.",
        Kind.NON_NEGATIVE_INT,
        non_negative_int,
        commands=PLANNING,
    ),
    Option(
        "max_duration",
        "--max-duration",
        "Stop sending after this many minutes (a cron window); exit 4.",
        Kind.POSITIVE_NUMBER,
        positive_number,
        commands=SENDING,
    ),
    Option(
        "coalesce",
        "--no-coalesce",
        "Send a contact's fields with every one of its interviews, not once per contact.",
        Kind.NEGATED_FLAG,
        toml_bool,
        setting="coalesce",
        file_key=("api", "coalesce"),
        commands=PLANNING,
    ),
    Option(
        "log_format",
        "--log-format",
        "auto: console lines on a terminal, JSON lines otherwise.",
        Kind.LOG_FORMAT,
        log_format,
        commands=ALL_RUNS,
        default="auto",
        python_default="json",  # a task runner's log is not a terminal
    ),
    Option(
        "progress",
        "--no-progress",
        "No progress bar (shown only on a terminal anyway).",
        Kind.NEGATED_FLAG,
        commands=SENDING,
        default=True,
        python_default=False,
    ),
)


def for_command(command: Command) -> tuple[Option, ...]:
    return tuple(option for option in OPTIONS if command in option.commands)


def file_schema() -> dict[str, dict[str, tuple[str, Validator]]]:
    """section -> key -> (Settings field, check), in the table's order."""
    schema: dict[str, dict[str, tuple[str, Validator]]] = {}
    for option in OPTIONS:
        if option.file_key is not None and option.setting is not None:
            section, key = option.file_key
            schema.setdefault(section, {})[key] = (option.setting, option.check)
    return schema


def setting_names(surface: Surface) -> dict[str, str]:
    """Settings field -> how the given surface names the option that sets it."""
    return {o.setting: o.named(surface) for o in OPTIONS if o.setting and o.commands}


def _keyword_forms() -> dict[str, str]:
    """Each flag as a Python keyword: `--state` -> `state=`, `--force` -> `force=True`."""
    forms: dict[str, str] = {}
    for option in OPTIONS:
        if option.flag is None:
            continue
        keyword = option.keyword
        forms[option.flag] = f"{keyword}=True" if option.kind is Kind.FLAG else f"{keyword}="
        if option.kind is Kind.SWITCH:
            on, off = option.flag.split("/")
            forms.update({on: f"{keyword}=True", off: f"{keyword}=False"})
        if option.kind is Kind.NEGATED_FLAG:
            forms[option.flag] = f"{keyword}=False"
    return forms


KEYWORD_FORMS = _keyword_forms()
_FLAG = re.compile(
    r"(?<![\w/-])("
    + "|".join(re.escape(flag) for flag in sorted(KEYWORD_FORMS, key=len, reverse=True))
    + r")(?![\w/-])( [A-Z]+\b)?"
)


def in_python_words(message: str) -> str:
    """A message written for the command line, reworded for a Python caller: each flag becomes
    its keyword (`give --state another path` -> `give state= another path`, `use --api-key-file
    PATH` -> `use api_key_file=PATH`). Messages are written once, in the command line's words,
    wherever they are raised; the Python functions reword what reaches their caller."""

    def keyword(match: re.Match[str]) -> str:
        form = KEYWORD_FORMS[match.group(1)]
        metavar = match.group(2)
        if metavar and form.endswith("="):
            return form + metavar.strip()
        return form + (metavar or "")

    return _FLAG.sub(keyword, message)
