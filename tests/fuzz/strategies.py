"""Shared hypothesis strategies: JSON values, mutations of valid messages."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


@st.composite
def mutated_object(draw: st.DrawFn, base: dict[str, Any]) -> dict[str, Any]:
    """`base` with some keys removed, replaced by any JSON value, or added (recursively into objects)."""

    def mutate(obj: dict[str, Any], depth: int) -> dict[str, Any]:
        out = dict(obj)
        for key in list(out):
            choice = draw(st.integers(0, 5))
            if choice == 0:
                del out[key]
            elif choice == 1:
                out[key] = draw(JSON)
            elif choice == 2 and isinstance(out[key], dict) and depth < 3:
                out[key] = mutate(out[key], depth + 1)
        if draw(st.booleans()):
            out[draw(st.text(max_size=10))] = draw(JSON)
        return out

    return mutate(base, 0)


def dumps(obj: Any) -> str:
    return json.dumps(obj)


@st.composite
def mutated_bytes(draw: st.DrawFn, base: bytes) -> bytes:
    """`base` with a few byte-level edits: flips, insertions, deletions, truncation."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.integers(0, 3))
        if op == 0:
            data[i] = draw(st.integers(0, 255))
        elif op == 1:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == 2:
            del data[i : i + draw(st.integers(1, 8))]
        else:
            del data[i:]
    return bytes(data)
