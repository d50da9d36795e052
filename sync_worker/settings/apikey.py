"""The API key: read from a file or an environment variable, checked, and never repeated.

A key is sent in an HTTP header, so it must be one run of printable ASCII. What goes wrong in
practice is a file with a second line, a Windows line ending, a BOM (Notepad) or a pasted
zero-width space: the first two are refused by the server or crash aiohttp's header check, so
every one of them is refused here, as is a value too short to be a key, before anything is
sent, in a line that names the file or variable and what is wrong but never echoes the key or
any part of it.
"""

from __future__ import annotations

import os
from pathlib import Path

from sync_worker.errors import ConfigError
from sync_worker.logs import register_secret
from sync_worker.settings.config import Settings

BOM = "\ufeff"
# Shorter is not a key (a placeholder, a stray character): and every line that held such a
# string would be scrubbed of it, `rows2.csv` shown as `rows[REDACTED].csv`
MIN_KEY_LENGTH = 8
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")  # Notepad's "Unicode" saves a UTF-16 file with one


def load_key(settings: Settings, key_file: str | None, given: str | None = None) -> str:
    """The API key: given directly (the Python API), else from a file or the environment; never
    from the command line."""
    if given is not None:
        where = "api_key="
        key = clean_key(given)
        if not key:
            raise ConfigError("api_key= is empty")
    elif key_file:
        where = f"--api-key-file {key_file}"
        key = clean_key(_read_key_file(Path(key_file), where))
        if not key:
            raise ConfigError(f"{where}: the file is empty")
    else:
        where = f"the environment variable {settings.api_key_env}"
        key = clean_key(os.environ.get(settings.api_key_env, ""))
        if not key:
            raise ConfigError(
                f"no API key: set the environment variable {settings.api_key_env} "
                "(or use --api-key-file PATH)"
            )
    if len(key) < MIN_KEY_LENGTH:  # not registered: redacting it would garble every line
        raise ConfigError(
            f"{where}: holds {len(key)} character(s), too short to be an API key (keys are "
            f"{MIN_KEY_LENGTH} characters or more): check what it holds"
        )
    register_secret(key)
    problem = key_problem(key)
    if problem:
        raise ConfigError(
            f"{where}: {problem}; the key is one line of letters, digits and punctuation"
        )
    return key


def clean_key(text: str) -> str:
    """The key with surrounding whitespace and a byte order mark removed (SPEC 8)."""
    return text.strip().removeprefix(BOM).strip()


def key_problem(key: str) -> str | None:
    """What makes `key` unusable in an Authorization header, in words that never quote it."""
    if any(char in "\r\n" for char in key):
        return "the key holds a line break (more than one line in the file or variable)"
    if any(char.isspace() for char in key):
        return "the key holds a space or tab inside it"
    if any(not char.isprintable() for char in key):
        return "the key holds a control or invisible character"
    if not key.isascii():
        return "the key holds a character that is not plain ASCII"
    return None


def _read_key_file(path: Path, where: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror})") from None
    encoding = "utf-16" if data.startswith(UTF16_BOMS) else "utf-8"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise ConfigError(
            f"{where}: the file is not UTF-8 text; save just the key in it, as UTF-8"
        ) from None
