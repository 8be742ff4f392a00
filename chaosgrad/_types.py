"""Type aliases shared by every layer: one home, imported from here.

`PyTree` is any nested structure of lists, tuples, dicts, NamedTuples and arrays that JAX's tree
functions walk; JAX has no precise static type for it, so it is `Any` under a readable name.
"""

from __future__ import annotations

from typing import Any, TypeAlias

PyTree: TypeAlias = Any
