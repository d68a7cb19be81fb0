"""scripts/sysdeps.txt covers every system path and external command the suite, the benchmarks and the
bridge use, so `make sysdeps` on a fresh machine installs all of them.

The scan is deliberately simple: the string literals of tests/, bench/ and bridge/ Python (AST), and the
text of the peer configuration templates (tests/sip/peers/, tests/deploy/peers/) and of the
shipped deployment configs (deploy/). It finds
- absolute paths under the system's top-level directories (tests/, bench/ and the peer templates);
- commands: the first word of what subprocess / asyncio.create_subprocess_* / os.exec* run when it is a
  literal, the argument of shutil.which / require_binary, and any literal naming a known peer or tool;
- shared libraries: ctypes.util.find_library / ctypes.CDLL with a literal name;
- modules a peer configuration loads (Kamailio `mpath` + `loadmodule`, baresip `module_path` + `module`).
A path is covered when it is listed, or is a directory holding a listed path, or is allowlisted below
(system places no package provides). A command is covered when a listed path ends in bin/NAME or sbin/NAME.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.sysdeps import REPO, SYSDEPS_LIST, binaries, cannot_install, listed, parse

SYSTEM_ROOTS = (
    "usr",
    "etc",
    "opt",
    "var",
    "lib",
    "lib64",
    "bin",
    "sbin",
    "srv",
    "run",
    "tmp",
    "proc",
    "dev",
    "sys",
    "home",
    "root",
    "mnt",
    "media",
    "snap",
)
ABS_PATH = re.compile(r"(?<![\w.:/@-])/(?:" + "|".join(SYSTEM_ROOTS) + r")(?:/[\w.+@-]+)*/?(?![\w])")
# Not provided by any package: the kernel's and the machine's own places.
NOT_PACKAGED = {
    "/tmp": "scratch space",
    "/proc": "the kernel's process view",
    "/dev": "device nodes",
    "/sys": "the kernel's sysfs",
    "/run": "runtime state",
}
# Commands named in the code that the suite does not need installed.
NOT_NEEDED_COMMANDS = {
    "espeak": "a voice name in the tests; as a command, tts.py's fallback only without espeak-ng",
    "apt-get": "tests/helpers/sysdeps.py only asks whether it exists (can packages be installed here?)",
    "py-spy": "a Python package (the `bench` extra, pyproject.toml), run from the venv by bench/load_sip.py",
}
# Peers and tools the suite drives or may drive: a literal naming one must be covered by the list.
KNOWN_TOOLS = frozenset(
    {
        "sipp",
        "kamailio",
        "baresip",
        "sox",
        "espeak-ng",
        "espeak",
        "chromium",
        "chromium-browser",
        "google-chrome",
        "chromedriver",
        "firefox",
        "geckodriver",
        "redis-server",
        "redis-cli",
        "postgres",
        "psql",
        "pg_ctl",
        "initdb",
        "pg_ctlcluster",
        "createdb",
        "ffmpeg",
        "ffprobe",
        "asterisk",
        "freeswitch",
        "rtpengine",
        "pjsua",
        "linphonec",
        "nginx",
        "haproxy",
        "openssl",
        "tcpdump",
        "tshark",
        "curl",
        "wget",
        "docker",
        "minio",
        "coturn",
        "turnserver",
        "gst-launch-1.0",
        "arecord",
        "aplay",
        "pulseaudio",
    }
)
SPAWNERS = frozenset(
    {
        "run",
        "Popen",
        "call",
        "check_call",
        "check_output",
        "getoutput",
        "getstatusoutput",
        "create_subprocess_exec",
        "create_subprocess_shell",
        "system",
        "popen",
        "execv",
        "execvp",
        "execvpe",
        "execl",
        "execlp",
        "spawnlp",
        "spawnvp",
    }
)
NAME_ARG = frozenset({"which", "require_binary"})
LIBRARY_ARG = frozenset({"find_library", "CDLL"})

MODULE_DIR = re.compile(r'^\s*(?:mpath\s*=\s*"([^"]+)"|module_path\s+(\S+))', re.M)
MODULE = re.compile(r'^\s*(?:loadmodule\s+"([^"/]+)"|module(?:_tmp|_app)?\s+(\S+\.so))', re.M)


def _sources(dirs: tuple[str, ...]) -> Iterator[Path]:
    for d in dirs:
        for path in sorted((REPO / d).rglob("*.py")):
            if "__pycache__" not in path.parts and path != Path(__file__).resolve():  # not its own vocabulary
                yield path


def _func_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def _literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def scan_python(source: str, where: str, *, paths: bool = True) -> list[tuple[str, str, str]]:
    """(kind, value, where) for each path, command and library the source names: kind is one of
    "path", "command", "library"."""
    found: list[tuple[str, str, str]] = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        text = _literal(node)
        if text is not None:
            line = f"{where}:{getattr(node, 'lineno', '?')}"
            if paths:
                found += [("path", m.group(0), line) for m in ABS_PATH.finditer(text)]
            words = text.split()
            if words and words[0] in KNOWN_TOOLS:
                found.append(("command", words[0], line))
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name, first, line = _func_name(node), node.args[0], f"{where}:{node.lineno}"
        if name in SPAWNERS or name in NAME_ARG:
            if isinstance(first, ast.List | ast.Tuple) and first.elts:
                first = first.elts[0]
            command = _literal(first)
            if command and command.split():
                found.append(("command", command.split()[0], line))
        elif name in LIBRARY_ARG and (library := _literal(first)):
            found.append(("library", library, line))
    return found


def scan_config(text: str, where: str) -> list[tuple[str, str, str]]:
    """Absolute paths in a peer configuration template, and the module files it loads."""
    found = [("path", m.group(0), where) for m in ABS_PATH.finditer(text)]
    dirs = [a or b for a, b in MODULE_DIR.findall(text)]
    for module in (a or b for a, b in MODULE.findall(text)):
        found += [("path", f"{d.rstrip('/')}/{module}", where) for d in dirs]
    return found


def _command_path(command: str) -> str:
    """A command given by absolute path counts as that path."""
    return command if command.startswith("/") else ""


def uncovered(found: list[tuple[str, str, str]], entries: dict[Path, str]) -> list[str]:
    listed_paths = {str(p) for p in entries}
    commands = binaries(entries)
    problems = []
    for kind, value, where in dict.fromkeys(found):  # the same finding once
        if kind == "command" and _command_path(value):
            kind = "path"
        if kind == "path":
            path = value.rstrip("/") or "/"
            if path in listed_paths or any(p.startswith(path + "/") for p in listed_paths):
                continue
            if any(path == a or path.startswith(a + "/") for a in NOT_PACKAGED):
                continue
            problems.append(f"{where}: path {value} is not in scripts/sysdeps.txt")
        elif kind == "command":
            if value in commands or value in NOT_NEEDED_COMMANDS:
                continue
            problems.append(f"{where}: command {value!r} is not in scripts/sysdeps.txt")
        else:
            stem = value.removeprefix("lib").split(".so")[0]
            if any(Path(p).name.startswith(f"lib{stem}.so") for p in listed_paths):
                continue
            problems.append(f"{where}: shared library {value!r} is not in scripts/sysdeps.txt")
    return problems


def inventory() -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for path in _sources(("tests", "bench")):
        found += scan_python(path.read_text(), str(path.relative_to(REPO)))
    for path in _sources(("bridge",)):  # the bridge's own paths are settings; its commands are not
        found += scan_python(path.read_text(), str(path.relative_to(REPO)), paths=False)
    for path in sorted(p for d in ("sip", "deploy") for p in (REPO / "tests" / d / "peers").rglob("*")):
        if path.is_file():
            found += scan_config(path.read_text(), str(path.relative_to(REPO)))
    # The shipped Kamailio configs: the modules they load (their other paths are the target machine's).
    for path in sorted((REPO / "deploy" / "kamailio").glob("*.cfg")):
        modules = scan_config(path.read_text(), str(path.relative_to(REPO)))
        found += [f for f in modules if f[1].endswith((".so", "/modules/"))]
    return found


def test_every_path_and_command_the_code_uses_is_in_the_sysdeps_list() -> None:
    found = inventory()
    kinds = {kind for kind, _, _ in found}
    assert kinds == {"path", "command", "library"}, f"the scan found too little to be trusted: {kinds}"
    problems = uncovered(found, listed())
    assert not problems, "\n".join(problems)


def test_the_scan_catches_what_the_list_lacks() -> None:
    source = """
import ctypes, shutil, subprocess
SOUNDS = "/usr/share/asterisk/sounds/en/hello-world.wav"
subprocess.run(["ffmpeg", "-i", "x"])
subprocess.Popen(("sipp", "-sf", "x.xml"))
shutil.which("redis-server")
ctypes.CDLL("libportaudio.so.2")
SCRATCH = "/tmp/ivr"
URL = "http://host/usr/share/not-a-path"
"""
    entries = parse("sip-tester /usr/bin/sipp\nsox /usr/bin/sox\n")
    problems = uncovered(scan_python(source, "x.py"), entries)
    assert problems == [
        "x.py:3: path /usr/share/asterisk/sounds/en/hello-world.wav is not in scripts/sysdeps.txt",
        "x.py:4: command 'ffmpeg' is not in scripts/sysdeps.txt",
        "x.py:6: command 'redis-server' is not in scripts/sysdeps.txt",
        "x.py:7: shared library 'libportaudio.so.2' is not in scripts/sysdeps.txt",
    ], problems
    config = 'mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"\nloadmodule "tm.so"\n'
    assert uncovered(scan_config(config, "k.cfg"), entries) == [
        "k.cfg: path /usr/lib/x86_64-linux-gnu/kamailio/modules/ is not in scripts/sysdeps.txt",
        "k.cfg: path /usr/lib/x86_64-linux-gnu/kamailio/modules/tm.so is not in scripts/sysdeps.txt",
    ]


def test_every_listed_path_is_installed() -> None:
    """`make sysdeps` ran (make test does it first): every listed path exists."""
    missing = [f"{path} (Debian package {pkg})" for path, pkg in listed().items() if not path.exists()]
    if missing and (reason := cannot_install()):
        pytest.skip(f"missing {', '.join(missing)}; {reason}")
    assert not missing, "missing: " + ", ".join(missing) + "; `make sysdeps` installs them"


def test_install_script_checks_the_list_and_names_what_is_missing(tmp_path: Path) -> None:
    script = REPO / "scripts" / "install-sysdeps.sh"
    fake = tmp_path / "sysdeps.txt"
    fake.write_text("# a package that cannot exist\nno-such-package-ivr /usr/share/no-such-dir/prompt.wav\n")
    env = {**os.environ, "SYSDEPS_LIST": str(fake)}
    done = subprocess.run(
        ["bash", str(script), "--check"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1
    assert "/usr/share/no-such-dir/prompt.wav (Debian package no-such-package-ivr)" in done.stderr
    fake.write_text("no-such-package-ivr usr/share/relative\n")
    done = subprocess.run(
        ["bash", str(script), "--check"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 1, done.stderr
    assert "malformed line" in done.stderr, done.stderr
    assert script.parent / "sysdeps.txt" == SYSDEPS_LIST  # the list the tests read is the script's


def test_a_missing_sysdep_fails_naming_its_package_and_skips_only_where_nothing_can_be_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.helpers import sysdeps

    gone, nope = Path("/usr/share/no-such-dir/prompt.wav"), Path("/usr/bin/nope")
    monkeypatch.setattr(sysdeps, "listed", lambda: {gone: "no-such-package-ivr", nope: "nope"})
    with pytest.raises(sysdeps.SysdepsListError, match="not in"):
        sysdeps.require_file("/usr/share/unlisted.wav")
    monkeypatch.setattr(sysdeps, "cannot_install", lambda: None)
    failed = re.escape(f"{gone} is missing: Debian package no-such-package-ivr")
    with pytest.raises(pytest.fail.Exception, match=failed):
        sysdeps.require_file(gone)
    with pytest.raises(pytest.fail.Exception, match=re.escape(f"{nope} is missing: Debian package nope")):
        sysdeps.require_binary("nope")
    monkeypatch.setattr(sysdeps, "cannot_install", lambda: "not root")
    with pytest.raises(pytest.skip.Exception, match=r"no-such-package-ivr .*; not root"):
        sysdeps.require_file(gone)
