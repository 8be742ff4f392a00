"""Adapters that put iterative systems behind the `chaosgrad.System` interface.

`make(name, **params)` builds a registered system; `names()` lists them; `describe(name)`
says what each takes. Heavy adapters (brax, jax-md, learned optimizers) import lazily.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

from chaosgrad.errors import InputError
from chaosgrad.params import parse_kv
from chaosgrad.system import System


@dataclass(frozen=True)
class Entry:
    """A registered system: where its factory lives and what it is."""

    name: str
    target: str  # "module:function"
    description: str
    alias_param: str | None = None  # "brax:ant" means make("brax", <alias_param>="ant")

    def factory(self):
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


_REGISTRY: dict[str, Entry] = {}


def register(
    name: str, target: str, description: str, alias_param: str | None = None
) -> None:
    """Register a system factory under ``name`` (target: ``"module:function"``)."""
    _REGISTRY[name] = Entry(name, target, description, alias_param)


register("logistic", "systems.maps:logistic", "logistic map x -> r x (1 - x); theta = r")
register("henon", "systems.maps:henon", "Henon map; theta = (a, b)")
register("lorenz", "systems.maps:lorenz", "Lorenz-63 flow, RK4; theta = (sigma, rho, beta)")
register("linear", "systems.maps:linear", "linear map x -> A x; theta = A")
register("heat", "systems.maps:heat", "FTCS heat equation, stable iff r <= 1/2; theta = r")
register("influence", "systems.influence:influence_balancing",
         "influence balancing (PES paper): linear, known meta-gradient; theta = scalar")
register("rnn", "systems.rnn:rnn", "vanilla tanh RNN x -> tanh(W x); theta = W (gain g)")
register("brax", "systems.brax:brax_system", "Brax rigid-body env with a policy; "
         "theta = policy weights", alias_param="env")
register("md", "systems.md:md_system", "jax-md 2-D bidisperse soft spheres; "
         "theta = small diameter")
register("lopt", "systems.lopt:lopt_system", "inner training by a (learned) optimizer; "
         "theta = optimizer weights", alias_param="task")


def names() -> list[str]:
    """Names of the registered systems."""
    return sorted(_REGISTRY)


def _entry(name: str) -> tuple[Entry, dict]:
    base, _, alias = name.partition(":")
    if base not in _REGISTRY:
        raise InputError(
            f"unknown system {name!r}; accepted: {', '.join(names())} "
            "(and e.g. brax:ENV for a Brax environment)"
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
    return dict(inspect.signature(entry.factory()).parameters)


def describe(name: str) -> dict:
    """What a registered system is and which parameters it takes (with defaults)."""
    entry, _ = _entry(name)
    return {
        "name": entry.name,
        "description": entry.description,
        "params": {
            k: (None if p.default is inspect.Parameter.empty else p.default)
            for k, p in parameters(name).items()
        },
    }


def make(name: str, **params) -> System:
    """Build the registered system ``name`` with ``params`` (see `describe`).

    ``name`` may carry a suffix for its main option, e.g. ``"brax:ant"``.
    Raises InputError for an unknown system or parameter.
    """
    entry, alias = _entry(name)
    accepted = parameters(name)
    unknown = [k for k in params if k not in accepted]
    if unknown:
        raise InputError(
            f"system {entry.name!r} has no parameter {', '.join(map(repr, unknown))}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return entry.factory()(**{**alias, **params})


def parse_params(name: str, items: list[str] | None) -> dict:
    """Turn CLI ``k=v`` strings into typed keyword arguments for ``make(name, ...)``.

    Values take the type of the parameter's default (int, float, bool, comma lists).
    """
    return parse_kv(items, parameters(name), f"system {name!r}", "--param")
