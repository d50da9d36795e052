"""The command line: thin on top of the pipeline; every expected error is one readable line."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from click.core import ParameterSource

from sync_worker.commands.terminal import console
from sync_worker.errors import ConfigError, SyncWorkerError
from sync_worker.fields import MAX_ID
from sync_worker.logs import configure, get_logger, json_mode, redact
from sync_worker.settings.checks import LOG_FORMATS, TIER_LIMITS
from sync_worker.settings.config import Settings, check_rate
from sync_worker.settings.options import Command, Kind, Option, for_command
from sync_worker.version import __version__
from sync_worker.vocabulary import ExitCode

if TYPE_CHECKING:
    from sync_worker.sandbox.server import SandboxConfig

F = TypeVar("F", bound=Callable[..., Any])
KEY_FLAG_MESSAGE = (
    "the API key is never taken on the command line (it would show in `ps`): "
    "set HINDSIGHT_API_KEY, name another variable with --api-key-env, or use --api-key-file"
)


class FiniteFloatRange(click.FloatRange):
    """A number in a range that is also finite: click's FloatRange lets `nan` through (it fails
    no comparison) and `inf` past any minimum, and either would stall or crash a run later."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a finite number", param, ctx)
        return number


POSITIVE_NUMBER = FiniteFloatRange(min=0, min_open=True)


class OneLineErrors(click.Group):
    """Usage errors (a bad option or value) as one line naming the option, like every other
    error, instead of click's usage block; a Ctrl-C that reaches a command as KeyboardInterrupt
    (while it reads its options or loads what it needs, or a stopped run passing SIGINT on)
    exits 130, not click's `Aborted!` and exit 1, which a wrapper would read as failed rows."""

    words: tuple[str, ...] = ()  # the command line, for a usage error's --log-format

    def make_context(
        self, info_name: str | None, args: list[str], *rest: Any, **kwargs: Any
    ) -> click.Context:
        self.words = tuple(args)
        with _one_line_usage_errors(self.words), _interrupted_is_130():
            return super().make_context(info_name, args, *rest, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        with _one_line_usage_errors(self.words), _interrupted_is_130():
            return super().invoke(ctx)


@contextlib.contextmanager
def _interrupted_is_130() -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        sys.exit(ExitCode.SIGINT)


class OneLineUsageError(click.UsageError):
    words: tuple[str, ...] = ()  # the command line

    def show(self, file: Any = None) -> None:
        configure(_asked_format(self.words), console=console)  # the options could not be read
        _error_line(" ".join(self.format_message().split()), self.exit_code)


def _asked_format(args: tuple[str, ...]) -> str:
    """The --log-format the command line gives, read from its words: a usage error comes
    before click has read the options, yet the error line should take the format asked for."""
    for at, word in enumerate(args):
        value = word.partition("=")[2] if word.startswith("--log-format=") else None
        if word == "--log-format" and at + 1 < len(args):
            value = args[at + 1]
        if value in ("json", "console", "auto"):
            return value
    return "auto"


# click >= 8.2 shows the help of a bare `sync-worker` by raising this usage error: keep it whole
SHOWS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", OneLineUsageError)


@contextlib.contextmanager
def _one_line_usage_errors(words: tuple[str, ...]) -> Iterator[None]:
    try:
        yield
    except (OneLineUsageError, SHOWS_HELP):
        raise
    except click.UsageError as exc:
        error = OneLineUsageError(exc.format_message(), exc.ctx)
        error.words = words
        raise error from None


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(func: F) -> F:
        for decorator in reversed(decorators):
            func = decorator(func)
        return func

    return apply


def _refuse_key(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
    if value is not None:
        raise click.UsageError(KEY_FLAG_MESSAGE, ctx=ctx)


inputs_argument = click.argument(
    "inputs", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=str)
)
refuse_key_option = click.option(
    "--api-key",
    hidden=True,
    expose_value=False,
    callback=_refuse_key,
    help="Refused: see --api-key-env.",
)
# How each kind of option in the table reads its value from the command line.
CLICK_TYPES: dict[Kind, click.ParamType[Any]] = {
    Kind.TEXT: click.STRING,
    Kind.FILE: click.Path(dir_okay=False, path_type=str),
    Kind.PATH: click.Path(path_type=str),  # a folder: the writer's own one line
    Kind.POSITIVE_INT: click.IntRange(min=1),
    Kind.NON_NEGATIVE_INT: click.IntRange(min=0),
    Kind.POSITIVE_NUMBER: POSITIVE_NUMBER,
    Kind.TIER: click.Choice(list(TIER_LIMITS), case_sensitive=False),
    Kind.LOG_FORMAT: click.Choice(list(LOG_FORMATS)),
}


def _click_option(option: Option, command: Command) -> Callable[[F], F]:
    """One entry of the option table as a click option of `command`."""
    assert option.flag is not None
    names, help_text = (option.flag, option.keyword), option.help_on(command)
    if option.kind is Kind.FLAG:
        return click.option(*names, is_flag=True, help=help_text)
    if option.kind is Kind.SWITCH:
        return click.option(*names, default=None, help=help_text)
    if option.kind is Kind.NEGATED_FLAG:
        return click.option(
            *names, is_flag=True, flag_value=False, default=option.default, help=help_text
        )
    return click.option(
        *names,
        type=CLICK_TYPES[option.kind],
        default=option.default,
        show_default=option.default is not None,
        metavar=option.metavar,
        help=help_text,
    )


def table_options(command: Command) -> Callable[[F], F]:
    """The options the table gives `command`, in the table's order, and the key refused."""
    flags = [option for option in for_command(command) if option.flag is not None]
    return _options(*(_click_option(option, command) for option in flags), refuse_key_option)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sync-worker")
def main() -> None:
    """Sync CRM exports (CSV, XLSX or Parquet) to Hindsight interviews, at the plan's rate, with a
    ledger line for every row."""


@main.command()
@inputs_argument
@table_options("run")
def run(inputs: tuple[str, ...], **opts: Any) -> None:
    """Sync rows to the API and write a ledger."""
    configure(opts["log_format"], console=console)
    from sync_worker.commands import api

    _finish(lambda: api.run(inputs, opts, "cli").exit_code)


@main.command()
@inputs_argument
@table_options("plan")
def plan(inputs: tuple[str, ...], **opts: Any) -> None:
    """Print the requests a run would send, one JSON line each; no network, no key."""
    configure(opts["log_format"], console=console)
    from sync_worker.commands import api

    def emit() -> int:
        out = sys.stdout.buffer
        with contextlib.closing(api.plan_lines(inputs, opts, "cli")) as lines:
            try:
                for chunk in lines:
                    out.write(chunk)
                out.flush()
            except BrokenPipeError:  # `plan ... | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0

    _finish(emit)


@main.command()
@inputs_argument
@table_options("validate")
def validate(inputs: tuple[str, ...], **opts: Any) -> None:
    """Check files and mapping and list row problems; no network, no key."""
    configure(opts["log_format"], console=console)
    from sync_worker.commands import api

    def check_files() -> int:
        checked = api.check_inputs(inputs, opts, "cli")
        for line in checked.invalid:
            click.echo(line)
        for problem in checked.notes_problems:
            click.echo(f"{problem} [notes_row_unusable]")
        notes = f", {len(checked.notes_problems)} unusable notes rows"
        for line in checked.set_aside:
            click.echo(line)
        aside = f", {checked.lines_set_aside} lines set aside" if checked.lines_set_aside else ""
        click.echo(
            f"{checked.rows} rows in {len(checked.files)} file(s): {checked.requests} requests "
            f"to send, {len(checked.invalid)} invalid rows"
            f"{notes if checked.notes_problems else ''}{aside}"
        )
        return checked.exit_code

    _finish(check_files)


@main.command()
@click.argument("run_id")
@table_options("revert")
def revert(run_id: str, **opts: Any) -> None:
    """Put back what a run changed (its history in the state); a revert is itself a run."""
    configure(opts["log_format"], console=console)
    from sync_worker.commands import api

    _finish(lambda: api.revert_run(run_id, opts, "cli").exit_code)


@main.command()
@click.option("--email", help="The contact's email.")
@click.option(
    "--interview",
    "interview_id",
    type=click.IntRange(min=1, max=MAX_ID),
    help="Any interview of the contact (its objective, and its contact's notes and name).",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="State database [default: the config's, else the base URL's default state].",
)
@click.option(
    "--base-url",
    help="The API the runs went to: it picks the default state [default: the vendor's].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file [default: config/sync.toml if it exists].",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document instead of text.")
def history(
    email: str | None,
    interview_id: int | None,
    state_path: Path | None,
    base_url: str | None,
    config_path: Path | None,
    as_json: bool,
) -> None:
    """Versions of a contact's notes and name (and an interview's objective), newest first."""
    configure("auto", console=console)
    from sync_worker.commands import api

    def show() -> int:
        from sync_worker.commands import history_report

        found = api.history_versions(email, interview_id, state_path, config_path, base_url)
        subject = f"contact {email.strip()}" if email is not None else f"interview {interview_id}"
        text = history_report.as_json(found) if as_json else history_report.as_text(found, subject)
        return _echo(text)

    _finish(show)


@main.command()
@click.argument("ledger", type=click.Path(path_type=Path))  # missing or a folder: our one line
def report(ledger: Path) -> None:
    """Summarise a ledger: counts by status and error code, failed rows, what to do next."""
    from sync_worker.commands.report import render

    configure("auto", console=console)
    _finish(lambda: _echo(render(ledger)))


@main.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port on 127.0.0.1 (0: any free port).",
)
@click.option(
    "--tier",
    type=click.Choice(list(TIER_LIMITS), case_sensitive=False),
    default="growth",
    show_default=True,
    help="Plan tier the sandbox enforces.",
)
@click.option(
    "--rate-limit", type=click.IntRange(min=1), help="Requests per window; overrides the tier."
)
@click.option(
    "--rate-period",
    type=POSITIVE_NUMBER,
    default=60.0,
    show_default=True,
    help="Window length in seconds.",
)
@click.option(
    "--api-key",
    help="The only key accepted (a test key, not a real one) [default: any non-empty key].",
)
@click.option(
    "--latency-ms",
    type=FiniteFloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Delay before each answer.",
)
@click.option(
    "--latency-jitter-ms",
    type=FiniteFloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Each answer's delay varies by up to this either side of --latency-ms.",
)
@click.option(
    "--fail-rate",
    type=FiniteFloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered 503.",
)
@click.option(
    "--drop-rate",
    type=FiniteFloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests whose connection is dropped without an answer.",
)
@click.option(
    "--garbage-rate",
    type=FiniteFloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Share of requests answered with bytes that are not HTTP, then closed.",
)
@click.option(
    "--reset-format",
    type=click.Choice(["unix", "seconds"]),
    default="unix",
    show_default=True,
    help="X-RateLimit-Reset as Unix time or seconds to wait.",
)
@click.option(
    "--whole-second-reset",
    is_flag=True,
    help="Round X-RateLimit-Reset up to a whole second (an integer Unix time, or whole seconds "
    "to wait), as many real servers do: the announced reset is then up to a second late.",
)
@click.option("--seed", type=int, help="Seed for the random failures, for repeatable runs.")
@click.option(
    "--contacts",
    type=click.Path(dir_okay=False, path_type=Path),
    help='JSON {interview_id: contact_id}: interviews that share a contact, e.g. {"502": 501}.',
)
def sandbox(**opts: Any) -> None:
    """Run the local simulated API on 127.0.0.1 (for the demo, tests and trying a mapping)."""
    from sync_worker.sandbox.server import SandboxConfig

    configure("auto", console=console)
    config = SandboxConfig(
        limit=_sandbox_limit(opts),
        period_s=opts["rate_period"],
        api_key=opts["api_key"],
        latency_ms=opts["latency_ms"],
        latency_jitter_ms=opts["latency_jitter_ms"],
        fail_rate=opts["fail_rate"],
        drop_rate=opts["drop_rate"],
        garbage_rate=opts["garbage_rate"],
        reset_format=opts["reset_format"],
        whole_seconds=opts["whole_second_reset"],
        seed=opts["seed"],
        links=_sandbox_links(opts["contacts"]),
    )
    _finish(lambda: _serve_sandbox(config, opts["port"]))


def _sandbox_links(path: Path | None) -> dict[int, int]:
    """--contacts FILE: which interviews share a contact, {interview_id: contact_id}."""
    from sync_worker.sandbox.server import read_links

    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(ConfigError(f"sandbox: --contacts {path}: cannot be read ({exc})"))
    try:
        return read_links(text, str(path))
    except ConfigError as exc:
        _fail(exc)


def _serve_sandbox(config: SandboxConfig, port: int) -> int:
    """Serve until SIGINT or SIGTERM, then exit 0: stopping the sandbox is its normal end."""
    import asyncio

    from sync_worker.sandbox.server import serve

    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # a signal at start-up
        asyncio.run(serve(config, port, _announce))
    return ExitCode.OK


def _sandbox_limit(opts: dict[str, Any]) -> int:
    """The same rule as `run`: a tier is per 60 s; another window needs --rate-limit."""
    settings = Settings(
        tier=opts["tier"].lower(), rate_limit=opts["rate_limit"], rate_period_s=opts["rate_period"]
    )
    tier_source = click.get_current_context().get_parameter_source("tier")
    sources = {"rate_period_s": "--rate-period"}
    if tier_source != ParameterSource.DEFAULT:
        sources["tier"] = "--tier"
    try:
        check_rate(settings, sources)
    except ConfigError as exc:
        configure("auto", console=console)
        _fail(exc)
    return settings.limit


def _announce(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _echo(text: str) -> int:
    click.echo(text)
    return ExitCode.OK


def _finish(action: Callable[[], int]) -> NoReturn:
    try:
        code = action()
    except SyncWorkerError as exc:
        _fail(exc)
    sys.exit(code)


def _fail(exc: SyncWorkerError) -> NoReturn:
    _error_line(str(exc), exc.exit_code)
    sys.exit(exc.exit_code)


def _error_line(text: str, exit_code: int) -> None:
    message = redact(text)
    if json_mode():
        get_logger().error("error", message=message, exit_code=exit_code)
    else:
        click.echo(f"sync-worker: error: {message}", err=True)
