"""The Debian packages the suite uses, and the one rule for them. The list is scripts/sysdeps.txt.

A test that needs a command or a file from a Debian package asks for it here: `require_binary("sipp")`,
`require_file(path)`, `asterisk_sound("hello-world")`. When it is missing the test FAILS, naming the path
and the package (`make sysdeps` installs it), unless installing is impossible on this machine (not root,
or no apt-get): then it skips and says so. Asking for a path or a command that scripts/sysdeps.txt does
not list is an error, so the list stays the whole truth.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSDEPS_LIST = REPO / "scripts" / "sysdeps.txt"
# What asterisk-core-sounds-en-wav installs. (/usr/share/asterisk/sounds/en is an alternative made by
# another package, asterisk-core-sounds-en, so a machine may not have it.)
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


class SysdepsListError(Exception):
    """scripts/sysdeps.txt is malformed, or a test asks for something it does not list."""


def parse(text: str, source: str = "sysdeps.txt") -> dict[Path, str]:
    """`PACKAGE ABSOLUTE-PATH` lines (comments and blank lines ignored) -> {path: package}."""
    entries: dict[Path, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].startswith("/"):
            raise SysdepsListError(f"{source}:{lineno}: expected 'PACKAGE /ABSOLUTE/PATH', got {line!r}")
        package, path = fields
        entries[Path(path)] = package
    return entries


@functools.cache
def listed() -> dict[Path, str]:
    """Every path in scripts/sysdeps.txt -> the Debian package that provides it."""
    return parse(SYSDEPS_LIST.read_text(), str(SYSDEPS_LIST))


def binaries(entries: dict[Path, str] | None = None) -> dict[str, Path]:
    """Command name -> listed path, for the listed paths in a bin/ or sbin/ directory."""
    entries = listed() if entries is None else entries
    return {p.name: p for p in entries if p.parent.name in ("bin", "sbin")}


def cannot_install() -> str | None:
    """Why `make sysdeps` cannot install packages here, or None when it can."""
    if os.geteuid() != 0:
        return "not root, so `make sysdeps` cannot apt-get"
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine"
    return None


def _missing(what: str, path: Path, package: str) -> NoReturn:
    message = f"{what} {path} is missing: Debian package {package} (`make sysdeps` installs it)"
    reason = cannot_install()
    if reason is not None:
        pytest.skip(f"{message}; {reason}")
    pytest.fail(message, pytrace=False)


def require_binary(name: str) -> str:
    """The path of command `name` (on PATH, else its listed path, e.g. /usr/sbin/kamailio)."""
    path = binaries().get(name)
    if path is None:
        raise SysdepsListError(f"command {name!r} is not in {SYSDEPS_LIST}; add its package and path")
    found = shutil.which(name) or (str(path) if path.exists() else None)
    if found is None:
        _missing("command", path, listed()[path])
    return found


def require_file(path: Path | str) -> Path:
    """`path` itself, after checking it exists (it must be listed in scripts/sysdeps.txt)."""
    path = Path(path)
    package = listed().get(path)
    if package is None:
        raise SysdepsListError(f"{path} is not in {SYSDEPS_LIST}; add it with the package that provides it")
    if not path.exists():
        _missing("file", path, package)
    return path


def asterisk_sound(name: str) -> Path:
    """A human-recorded prompt from asterisk-core-sounds-en-wav, e.g. "hello-world"."""
    return require_file(ASTERISK_SOUNDS / f"{name}.wav")
