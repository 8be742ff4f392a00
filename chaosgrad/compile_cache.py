"""The compile cache: compiled functions of a `chaosgrad.system.System` keyed on what the
system computes (`compile_key`: its functions' code, closures, defaults and the globals they
read, by `_function_key`), not on the record's identity, so a system rebuilt by its factory
reuses the programs compiled for the last build (`cache_by_functions`).
"""

from __future__ import annotations

import functools
import hashlib
import types
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

if TYPE_CHECKING:  # the record; chaosgrad.system imports this module
    from chaosgrad.system import System


# -- compiled-function caches keyed on what a system computes ------------------------------------
# A compiled program bakes in everything its Python functions read while being traced: their
# code, closure cells, defaults, and the module globals they read. The key below covers all
# of these, so a redefined function that reads a changed global (a notebook cell re-run with
# A = 0.2 instead of 1.4) compiles afresh instead of being served the old program.
# A value that can be neither compared by content nor trusted immutable makes the system
# uncacheable: it then compiles on every call, never reusing a program wrongly.

# Functions from these packages are installed code: their module globals do not change while
# a program runs, so only their code, closures and defaults are keyed (cheap, and two builds
# of a built-in system still share compiled programs).
_LIBRARY_ROOTS = frozenset(
    {
        "chaosgrad",
        "jax",
        "jaxlib",
        "numpy",
        "optax",
        "scipy",
        "flax",
        "equinox",
        "brax",
        "mujoco",
        "functools",
        "builtins",
        "math",
        "operator",
        "ml_dtypes",
    }
)
_MAX_DEPTH = 12
_MAX_ITEMS = 256


class _Uncacheable(Exception):
    """A value a compiled function depends on cannot be keyed safely."""


class _Same:
    """Equal only to the very same object, which it keeps alive: an ``id`` cannot be reused
    by another object while a cache key holds it."""

    __slots__ = ("obj",)

    def __init__(self, obj):
        self.obj = obj

    def __eq__(self, other):
        return isinstance(other, _Same) and other.obj is self.obj

    def __hash__(self):
        return id(self.obj)


@functools.lru_cache(maxsize=2048)
def _global_names(code) -> tuple:
    """Every name ``code`` (or a function or lambda nested in it) may read as a global."""
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            names.update(_global_names(c))
    return tuple(sorted(names))


def _is_library(obj) -> bool:
    mod = getattr(obj, "__module__", None) or ""
    return mod.split(".")[0] in _LIBRARY_ROOTS


def _function_key(f: Any, memo: dict | None = None, depth: int = 0) -> Any:
    """A hashable key that is equal for two functions that compute the same thing: the same
    code, equal closure values, defaults and (for user code) values of the globals it reads,
    nested functions compared the same way.

    Values that cannot be compared by content are compared by identity only when they are
    immutable (JAX arrays, dtypes, classes, modules); anything else raises `_Uncacheable`,
    so the key errs on the side of recompiling, never of reusing wrongly.
    """
    memo = {} if memo is None else memo
    return _value_key(f, memo, depth)


def _code_key(f, memo: dict, depth: int) -> tuple:
    code = f.__code__
    if id(f) in memo:
        key = memo[id(f)]
        return ("recursive", code) if key is None else key
    memo[id(f)] = None  # a function that reads itself (recursion) stops here
    cells = []
    for c in f.__closure__ or ():
        try:
            cells.append(_value_key(c.cell_contents, memo, depth + 1))
        except ValueError:  # an empty cell (a name bound later in the enclosing function)
            cells.append(("empty",))
    defaults = tuple(_value_key(d, memo, depth + 1) for d in (f.__defaults__ or ()))
    kwdefaults = tuple(
        (k, _value_key(v, memo, depth + 1)) for k, v in sorted((f.__kwdefaults__ or {}).items())
    )
    reads: tuple = ()
    if not _is_library(f):
        g = f.__globals__
        names = _global_names(code)
        read = []
        for name in names:
            if name in g:
                read.append((name, _global_key(g[name], names, memo, depth + 1)))
        reads = tuple(read)
    key = ("fn", code, tuple(cells), defaults, kwdefaults, reads)
    memo[id(f)] = key
    return key


def _global_key(x: Any, names: tuple, memo: dict, depth: int) -> Any:
    """A global's key; for a module, also the plain values of the attributes the code may read
    (``cfg.A``), since those are module globals too."""
    if isinstance(x, types.ModuleType):
        if _is_library(x) or (x.__name__.split(".")[0] in _LIBRARY_ROOTS):
            return ("module", x.__name__)
        attrs = []
        for n in names:
            v = getattr(x, n, None)
            if v is not None and not callable(v) and not isinstance(v, types.ModuleType):
                attrs.append((n, _value_key(v, memo, depth + 1)))
            elif callable(v) and hasattr(v, "__code__"):
                attrs.append((n, _value_key(v, memo, depth + 1)))
        return ("module", _Same(x), tuple(attrs))
    return _value_key(x, memo, depth)


def _frozen(x) -> bool:
    params = getattr(type(x), "__dataclass_params__", None)
    return bool(params is not None and params.frozen)


def _value_key(x: Any, memo: dict, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _Uncacheable("nested too deeply")
    if isinstance(x, (bool, int, str, bytes, type(None))):
        return ("value", type(x), x)
    if isinstance(x, (float, complex)):  # repr: NaN equals NaN, -0.0 differs from 0.0
        return ("value", type(x), repr(x))
    if isinstance(x, types.FunctionType):
        return _code_key(x, memo, depth)
    if isinstance(x, types.MethodType):
        return (
            "method",
            _value_key(x.__func__, memo, depth + 1),
            _value_key(x.__self__, memo, depth + 1),
        )
    if isinstance(x, functools.partial):
        return (
            "partial",
            _value_key(x.func, memo, depth + 1),
            tuple(_value_key(a, memo, depth + 1) for a in x.args),
            tuple((k, _value_key(v, memo, depth + 1)) for k, v in sorted(x.keywords.items())),
        )
    if isinstance(x, jax.Array):  # immutable; identity, kept alive by the key
        return ("array", _Same(x))
    if isinstance(x, np.ndarray):  # mutable in place: by content
        if x.dtype == object:
            raise _Uncacheable("a numpy array of objects")
        data = np.ascontiguousarray(x)
        return (
            "ndarray",
            data.dtype.str,
            data.shape,
            hashlib.blake2b(data.tobytes(), digest_size=16).digest(),
        )
    if isinstance(x, np.generic):
        return ("npscalar", x.dtype.str, x.tobytes())
    if isinstance(x, (np.dtype, type, types.ModuleType, types.BuiltinFunctionType)):
        return ("same", _Same(x))
    if isinstance(x, (tuple, list, set, frozenset)):
        if len(x) > _MAX_ITEMS:
            raise _Uncacheable(f"a {type(x).__name__} of {len(x)} items")
        items = sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x
        return (type(x),) + tuple(_value_key(v, memo, depth + 1) for v in items)
    if isinstance(x, dict):
        if len(x) > _MAX_ITEMS:
            raise _Uncacheable(f"a dict of {len(x)} items")
        return (type(x),) + tuple(
            (_value_key(k, memo, depth + 1), _value_key(v, memo, depth + 1)) for k, v in x.items()
        )
    if _is_library(type(x)) and (not hasattr(x, "__dict__") or _frozen(x)):
        # Installed code's objects without attributes to reassign (jit wrappers, ufuncs, a
        # Brax or MJX model, which are frozen dataclasses of arrays): by identity.
        return ("same", _Same(x))
    if hasattr(x, "__dict__") or hasattr(type(x), "__slots__"):
        fields = dict(getattr(x, "__dict__", {}))
        for slot in getattr(type(x), "__slots__", ()):
            if isinstance(slot, str) and hasattr(x, slot):
                fields[slot] = getattr(x, slot)
        return ("object", type(x), _Same(x), _value_key(fields, memo, depth + 1))
    raise _Uncacheable(f"a {type(x).__name__}")


def compile_key(system: System) -> tuple:
    """What a compiled function of ``system`` depends on: its functions (by `_function_key`)
    and meta-loss rule, not the `System` object. Two builds of the same system, or copies
    that differ in θ, name or metadata (`System.replace`), share compiled functions."""
    fns = (system.init, system.step, system.phase, system.with_phase)
    memo: dict = {}
    return tuple(_function_key(f, memo) for f in fns) + (system.meta_loss,)


def cache_by_functions(maxsize: int = 64):
    """Decorator for ``build(system, *args)`` → compiled function: cached on
    ``(compile_key(system), *args)`` instead of on the `System` object's identity, so a
    system rebuilt by its factory (every command, figure and estimator builds its own)
    reuses the programs compiled for the last build instead of compiling again (a Brax
    step compiles in 30 to 70 s on 2 CPU cores)."""

    def deco(build):
        cache = {}  # (compile_key, *args) → the built function

        @functools.wraps(build)
        def wrapper(system: System, *args):
            try:
                key = (compile_key(system),) + args
            except _Uncacheable:  # correctness first: compile for this call alone
                return build(system, *args)
            if key in cache:
                cache[key] = cache.pop(key)  # most recently used last
                return cache[key]
            fn = build(system, *args)
            cache[key] = fn
            while len(cache) > maxsize:
                cache.pop(next(iter(cache)))
            return fn

        wrapper.cache_clear = cache.clear
        return wrapper

    return deco
