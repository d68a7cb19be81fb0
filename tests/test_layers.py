"""Packages depend only downward: every import in bridge/ checked against one ordered layer table.

Each module's imports are read from its syntax tree (all of them: module level, inside functions,
under `if TYPE_CHECKING:`), resolved to the bridge module they name, and checked:

- a module may import its own package and any lower layer, never a higher one;
- two packages of the same layer may not import each other unless `SAME_LAYER` lists the pair;
- `ONLY_FROM` packages may be imported only by the packages listed (the engine is a provider like
  any other: calls reach it through the realtime protocol, only the app mounts it);
- inside `telephony/`: `leg.py` is the base every leg imports, `rtp/` sits on it, and the two legs
  (`twilio/`, `sip/`) may use the base and RTP but never each other.

docs/architecture.md describes the same table; change both together.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "bridge"

# Lowest first. A name is a top-level module or package of bridge/; "__init__" is the package root
# (its docstring and __version__).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__", "errors"),
    ("media",),
    ("settings", "metrics", "limits", "logsafe"),
    ("telephony", "realtime"),
    ("speech",),
    ("engine", "dialplan"),
    ("call",),
    ("cluster",),
    ("records",),
    ("web",),
    ("app", "ops_routes", "cli", "tools", "__main__"),
)

# Same-layer imports allowed, (importer, imported) -> why.
SAME_LAYER: dict[tuple[str, str], str] = {
    ("__main__", "cli"): "`python -m bridge` is the command line",
    ("cli", "app"): "`ivr-bridge serve` builds the app and runs it",
    ("app", "ops_routes"): "the app mounts the operations routes (health, readiness, metrics)",
    ("cli", "tools"): "`ivr-bridge call` and `ivr-bridge dialplan test` are command lines",
    ("tools", "app"): "`ivr-bridge dialplan test` serves the app in-process to call it",
    ("tools", "cli"): "`ivr-bridge dialplan test` listens the way `ivr-bridge serve` does",
}

# Packages only some higher packages may import, -> (who may, why).
ONLY_FROM: dict[str, tuple[frozenset[str], str]] = {
    "engine": (
        frozenset({"app", "web"}),
        "the engine is a provider like any other: calls reach it through the realtime protocol "
        "(the shared contract is bridge/realtime/local_engine.py), only the app mounts it",
    ),
}

# Areas inside bridge/telephony/, -> the areas each may import besides itself.
TELEPHONY_AREAS: dict[str, frozenset[str]] = {
    "base": frozenset(),  # telephony/__init__.py, telephony/leg.py: the events and the Leg protocol
    "rtp": frozenset({"base"}),
    "sip": frozenset({"base", "rtp"}),
    "twilio": frozenset({"base", "rtp"}),
    "webrtc": frozenset({"base"}),  # the browser softphone's leg (aiortc does its own RTP)
}

LAYER_OF: dict[str, int] = {name: i for i, names in enumerate(LAYERS) for name in names}


@dataclass(frozen=True, slots=True)
class Violation:
    path: str
    line: int
    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target} ({self.reason})"


def module_name(path: Path) -> str:
    """bridge/telephony/sip/uas.py -> bridge.telephony.sip.uas (packages by their __init__)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str, root: Path = ROOT) -> bool:
    path = root.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, module: str, is_package: bool, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, bridge module) for every import in `source`, wherever it stands in the module."""
    found: list[tuple[int, str]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if alias.name != "*" and is_module(sub, root) else base))
    ours = ((line, name) for line, name in found if name == "bridge" or name.startswith("bridge."))
    return list(dict.fromkeys(ours))


def top(dotted: str) -> str:
    """bridge.call.agent -> call; bridge -> __init__."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def telephony_area(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[2] if len(parts) > 3 and parts[2] in TELEPHONY_AREAS else "base"


def check_import(path: str, line: int, importer: str, target: str) -> Violation | None:
    """The rule `importer` (a bridge module) breaks by importing `target`, or None."""
    src, dst = top(importer), top(target)
    if src == dst:
        if src != "telephony":
            return None
        a, b = telephony_area(importer), telephony_area(target)
        if a == b or b in TELEPHONY_AREAS[a]:
            return None
        return Violation(path, line, target, f"telephony/{a} may not import telephony/{b}")
    if src not in LAYER_OF or dst not in LAYER_OF:
        unknown = src if src not in LAYER_OF else dst
        return Violation(path, line, target, f"{unknown!r} is in no layer: add it to LAYERS")
    if dst in ONLY_FROM and src not in ONLY_FROM[dst][0]:
        allowed = ", ".join(sorted(ONLY_FROM[dst][0]))
        return Violation(path, line, target, f"layer {src} may not import layer {dst}: only {allowed} may")
    if LAYER_OF[dst] > LAYER_OF[src]:
        return Violation(path, line, target, f"layer {src} may not import layer {dst}")
    if LAYER_OF[dst] == LAYER_OF[src] and (src, dst) not in SAME_LAYER:
        return Violation(path, line, target, f"layer {src} may not import layer {dst}: same layer")
    return None


def check_source(path: str, source: str, module: str, is_package: bool, root: Path = ROOT) -> list[Violation]:
    out: list[Violation] = []
    for line, target in imported_modules(source, module, is_package, root):
        violation = check_import(path, line, module, target)
        if violation is not None:
            out.append(violation)
    return out


def bridge_modules() -> list[Path]:
    return sorted(BRIDGE.rglob("*.py"))


def test_every_module_is_in_a_layer() -> None:
    names = [name for names in LAYERS for name in names]
    assert len(names) == len(set(names)), "a name appears twice in LAYERS"
    unplaced = sorted(
        {top(module_name(path)) for path in bridge_modules()} - set(LAYER_OF),
    )
    assert not unplaced, f"bridge/ packages or modules in no layer (add them to LAYERS): {unplaced}"


def test_imports_go_only_down() -> None:
    violations: list[Violation] = []
    for path in bridge_modules():
        rel = str(path.relative_to(ROOT))
        violations += check_source(
            rel, path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
        )
    assert not violations, "imports against the layers:\n" + "\n".join(map(str, violations))


def test_exceptions_are_explained_and_current() -> None:
    for (src, dst), reason in SAME_LAYER.items():
        assert LAYER_OF[src] == LAYER_OF[dst], f"SAME_LAYER {src} -> {dst}: not the same layer"
        assert reason.strip(), f"SAME_LAYER {src} -> {dst}: say why"
    for dst, (allowed, reason) in ONLY_FROM.items():
        assert dst in LAYER_OF, f"ONLY_FROM {dst}: in no layer"
        assert allowed <= set(LAYER_OF), f"ONLY_FROM {dst}: {sorted(allowed - set(LAYER_OF))} in no layer"
        assert reason.strip(), f"ONLY_FROM {dst}: say why"
    assert {p.name for p in (BRIDGE / "telephony").iterdir() if (p / "__init__.py").is_file()} <= set(
        TELEPHONY_AREAS
    ), "a new telephony subpackage: place it in TELEPHONY_AREAS"


# -- the checker itself: each rule catches what it should (and only that) -----------------------


def _check(module: str, source: str, tmp_path: Path) -> list[str]:
    """Check `source` as bridge module `module` against a fake tree holding the modules it names."""
    for name in (
        "bridge.call.agent",
        "bridge.engine.server",
        "bridge.media.g711",
        "bridge.telephony.sip.uas",
        "bridge.telephony.twilio.leg",
        "bridge.telephony.leg",
        "bridge.telephony.rtp.packet",
        "bridge.speech.asr",
        "bridge.dialplan.runner",
    ):
        path = tmp_path.joinpath(*name.split(".")).with_suffix(".py")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        for parent in path.parents:
            if parent == tmp_path:
                break
            (parent / "__init__.py").touch()
    path = module.replace(".", "/") + ".py"
    return [str(v) for v in check_source(path, source, module, False, tmp_path)]


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "bridge.media.vad",
            "from bridge.call import agent\n",
            ["bridge/media/vad.py:1 imports bridge.call.agent (layer media may not import layer call)"],
        ),
        (
            "bridge.media.vad",
            "def f():\n    from bridge.speech.asr import x\n",
            ["bridge/media/vad.py:2 imports bridge.speech.asr (layer media may not import layer speech)"],
        ),
        (
            "bridge.media.vad",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bridge.call\n",
            ["bridge/media/vad.py:3 imports bridge.call (layer media may not import layer call)"],
        ),
        (
            "bridge.media.vad",
            "from ..call.agent import X\n",
            ["bridge/media/vad.py:1 imports bridge.call.agent (layer media may not import layer call)"],
        ),
        (
            "bridge.speech.asr",
            "from bridge.dialplan.runner import Runner\n",
            [
                "bridge/speech/asr.py:1 imports bridge.dialplan.runner "
                "(layer speech may not import layer dialplan)"
            ],
        ),
        (
            "bridge.engine.server",
            "from bridge.dialplan import runner\n",
            [
                "bridge/engine/server.py:1 imports bridge.dialplan.runner "
                "(layer engine may not import layer dialplan: same layer)"
            ],
        ),
        (
            "bridge.call.agent",
            "from bridge.engine.server import mount_engine\n",
            [
                "bridge/call/agent.py:1 imports bridge.engine.server "
                "(layer call may not import layer engine: only app, web may)"
            ],
        ),
        (
            "bridge.telephony.twilio.leg",
            "from bridge.telephony.sip.uas import Uas\n",
            [
                "bridge/telephony/twilio/leg.py:1 imports bridge.telephony.sip.uas "
                "(telephony/twilio may not import telephony/sip)"
            ],
        ),
        (
            "bridge.telephony.leg",
            "from bridge.telephony.rtp import packet\n",
            [
                "bridge/telephony/leg.py:1 imports bridge.telephony.rtp.packet "
                "(telephony/base may not import telephony/rtp)"
            ],
        ),
        (
            "bridge.newthing",
            "from bridge.media import g711\n",
            ["bridge/newthing.py:1 imports bridge.media.g711 ('newthing' is in no layer: add it to LAYERS)"],
        ),
        # allowed: downward, own package, telephony legs on the base and RTP, the app on the engine
        ("bridge.call.agent", "from bridge.media import g711\nfrom bridge.call import bargein\n", []),
        (
            "bridge.telephony.sip.uas",
            "from bridge.telephony.leg import X\nfrom bridge.telephony.rtp import packet\n",
            [],
        ),
        ("bridge.app", "from bridge.engine.server import mount_engine\nimport bridge\n", []),
        ("bridge.media.vad", "import numpy\nfrom collections import deque\n", []),
    ],
)
def test_checker(module: str, source: str, expected: list[str], tmp_path: Path) -> None:
    assert _check(module, source, tmp_path) == expected
