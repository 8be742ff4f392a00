"""Adapters that put iterative systems behind the `chaosgrad.System` interface.

`make(name, **params)` builds a registered system, or a user's own from ``"module:function"``
or ``"path/to/file.py:function"``; `names()` lists the registered ones; `describe(name)` says
what each takes. Heavy adapters (brax, mjx, jax-md, learned optimizers) import lazily.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from chaosgrad import user_code
from chaosgrad.errors import InputError
from chaosgrad.params import nonfinite_allowed, parse_kv

# `chaosgrad.system` (and so JAX) is imported only by `make`: listing and describing the
# registered systems reads their factories' signatures from the source, without importing
# them (`chaosgrad systems` starts in a fraction of a second).


@dataclass(frozen=True)
class Entry:
    """A registered system: where its factory lives and what it is."""

    name: str
    target: str  # "module:function", relative to this package when it starts with "."
    description: str
    alias_param: str | None = None  # "brax:ant" means make("brax", <alias_param>="ant")

    user: bool = False  # a user's "module:function" or "file.py:function"

    def factory(self):
        """The function that builds the system."""
        module, _, func = self.target.rpartition(":")
        if module.startswith(".") and not self.user:  # "./mysys.py:make" is a user's file
            return getattr(importlib.import_module(module, package=__name__), func)
        return load_factory(self.target)


_REGISTRY: dict[str, Entry] = {}


def register(name: str, target: str, description: str, alias_param: str | None = None) -> None:
    """Register a system factory under ``name`` (target: ``"module:function"``)."""
    _REGISTRY[name] = Entry(name, target, description, alias_param)


register("logistic", ".maps:logistic", "logistic map x -> r x (1 - x); theta = r")
register("henon", ".maps:henon", "Henon map; theta = (a, b)")
register("lorenz", ".maps:lorenz", "Lorenz-63 flow, RK4; theta = (sigma, rho, beta)")
register("linear", ".maps:linear", "linear map x -> A x; theta = A")
register("heat", ".maps:heat", "FTCS heat equation, stable iff r <= 1/2; theta = r")
register(
    "influence",
    ".influence:influence_balancing",
    "influence balancing (PES paper): linear, known meta-gradient; theta = scalar",
)
register("rnn", ".rnn:rnn", "vanilla tanh RNN x -> tanh(W x); theta = W (gain g)")
register(
    "brax",
    ".brax:brax_system",
    "Brax rigid-body env with a policy; theta = policy weights",
    alias_param="env",
)
register(
    "mjx",
    ".mjx:mjx_system",
    "MuJoCo MJX model (shipped MJCF: double_pendulum, "
    "cartpole, tumbler) with a policy; theta = policy weights",
    alias_param="model",
)
register("md", ".md:md_system", "jax-md 2-D bidisperse soft spheres; theta = small diameter")
register(
    "lopt",
    ".lopt:lopt_system",
    "inner training by a (learned) optimizer; theta = optimizer weights",
    alias_param="task",
)


def names() -> list[str]:
    """Names of the registered systems."""
    return sorted(_REGISTRY)


def load_factory(spec: str):
    """The function named by ``"module:function"`` or ``"path/to/file.py:function"``.

    A module is looked up on ``sys.path`` with the current folder first (as ``python -m``
    does), so ``chaosgrad diagnose mymod:make`` finds ``./mymod.py``.
    Raises InputError when the module, file or function cannot be found
    (`chaosgrad.user_code.load_factory`, shared with the estimators).
    """
    return user_code.load_factory(spec, "system", names)


def user_code_error(spec: str, doing: str, e: BaseException, path=None) -> InputError:
    """One line for a failure of user code: the spec, what was being done, where (file and
    line of the innermost frame in the user's code) and the exception."""
    return user_code.user_code_error(spec, doing, e, path, "system")


def _entry(name: str) -> tuple[Entry, dict]:
    base, _, alias = name.partition(":")
    if base not in _REGISTRY:
        if ":" in name:  # a user's own factory, "module:function"
            return Entry(name, name, f"user system {name}", user=True), {}
        raise InputError(
            f"unknown system {name!r}; accepted: {', '.join(names())} "
            "(and e.g. brax:ENV for a Brax environment, mjx:MODEL for an MJX model, or "
            "module:function for your own)"
        )
    entry = _REGISTRY[base]
    if alias:
        if entry.alias_param is None:
            raise InputError(f"system {base!r} takes no ':' suffix (got {name!r})")
        return entry, {entry.alias_param: alias}
    return entry, {}


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The parameters ``make(name, ...)`` accepts, by name."""
    entry, _ = _entry(name)
    factory = entry.factory()
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError) as e:
        raise InputError(
            f"system {name!r}: the parameters of {factory!r} cannot be read ({e})"
        ) from None


def describe(name: str) -> dict:
    """What a registered system is and which parameters it takes (with defaults)."""
    entry, _ = _entry(name)
    params = _defaults_from_source(entry)
    if params is None:  # not a plain function of this package: import it and ask
        params = {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in parameters(name).items()
        }
    return {"name": entry.name, "description": entry.description, "params": params}


def _constant(node):
    """The value of a default written as a literal or literal arithmetic (``8.0 / 3.0``)."""
    import ast
    import operator

    ops = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
        ast.Pow: operator.pow,
        ast.USub: operator.neg,
        ast.UAdd: operator.pos,
    }
    if isinstance(node, ast.BinOp) and type(node.op) in ops:
        return ops[type(node.op)](_constant(node.left), _constant(node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
        return ops[type(node.op)](_constant(node.operand))
    return ast.literal_eval(node)


def _defaults_from_source(entry: Entry, depth: int = 0) -> dict | None:
    """The factory's parameters and defaults read from this package's source with `ast`
    (following one ``from chaosgrad.systems.x import f``), or None when that is not possible
    (a default that is not a literal, a user's module, ...)."""
    import ast

    module, _, func = entry.target.rpartition(":")
    if not module.startswith(".") or depth > 2:
        return None
    base = Path(__file__).parent.joinpath(*module.lstrip(".").split("."))
    path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == func:
            a = node.args
            if a.vararg or a.kwarg or a.posonlyargs:
                return None
            pos = a.args
            defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
            out = {}
            try:
                for arg, d in [
                    *zip(pos, defaults, strict=True),
                    *zip(a.kwonlyargs, a.kw_defaults, strict=True),
                ]:
                    out[arg.arg] = None if d is None else _constant(d)
            except (ValueError, TypeError, SyntaxError, ArithmeticError):
                return None
            return out
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and any((al.asname or al.name) == func for al in node.names)
        ):
            prefix = __name__ + "."
            if not node.module.startswith(prefix):
                return None
            name = next(al.name for al in node.names if (al.asname or al.name) == func)
            target = "." + node.module[len(prefix) :] + ":" + name
            return _defaults_from_source(Entry(entry.name, target, ""), depth + 1)
    return None


def make(name: str, **params):
    """Build the registered system ``name`` with ``params`` (see `describe`).

    ``name`` may carry a suffix for its main option, e.g. ``"brax:ant"``, or name a user's
    factory as ``"module:function"`` / ``"file.py:function"`` (a function returning a
    `System`; its keyword arguments are the parameters). Registered names win over modules
    of the same name. Raises InputError for an unknown system or parameter.
    """
    from chaosgrad.system import System

    entry, alias = _entry(name)
    accepted = parameters(name)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise InputError(
            f"system {entry.name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    kwargs = {**alias, **params}
    if not entry.user:
        from chaosgrad.validation import mark_built_in

        system = entry.factory()(**kwargs)
        if isinstance(system, System) and entry.target.startswith("."):  # one of ours
            mark_built_in(system)
    else:
        factory = entry.factory()
        _check_call(entry.name, accepted, kwargs)
        try:
            system = factory(**kwargs)
        except KeyboardInterrupt:
            raise
        except InputError as e:  # e.g. chaosgrad.System refusing a field: say whose
            raise InputError(f"system {entry.name!r}: {e}") from None
        except BaseException as e:  # noqa: BLE001 -- any failure of the user's factory
            raise user_code_error(
                entry.name, f"calling {entry.name.rpartition(':')[2]}(...)", e
            ) from None
    if not isinstance(system, System):
        raise InputError(f"{entry.target} returned {type(system).__name__}, not a chaosgrad.System")
    return system


def _check_call(spec: str, accepted: dict, kwargs: dict) -> None:
    """A user's factory is called with keyword parameters only: refuse, in one line, one
    that needs arguments that cannot be given that way, or are not given."""
    P = inspect.Parameter
    positional = [
        n for n, p in accepted.items() if p.kind is P.POSITIONAL_ONLY and p.default is P.empty
    ]
    if positional:
        raise InputError(
            f"system {spec!r}: the factory needs positional-only arguments "
            f"{', '.join(positional)}; a system factory is called with keyword "
            "parameters only (--param K=V): give them defaults"
        )
    missing = [
        n
        for n, p in accepted.items()
        if p.default is P.empty
        and n not in kwargs
        and p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)
    ]
    if missing:
        raise InputError(
            f"system {spec!r}: the factory needs {', '.join(missing)} with no "
            "default; give each as --param K=V (make(..., K=V)), or a default "
            "in the factory"
        )


def parse_params(name: str, items: list[str] | None) -> dict:
    """Turn CLI ``k=v`` strings into typed keyword arguments for ``make(name, ...)``.

    Values take the type of the parameter's default (int, float, bool, comma lists). A key
    given twice, or a NaN/Inf value, is refused unless the factory lists the key in its
    ``nonfinite_params`` attribute.
    """
    entry, _ = _entry(name)
    return parse_kv(
        items, parameters(name), f"system {name!r}", "--param", nonfinite_allowed(entry.factory())
    )
