"""Errors that name what was wrong and what is accepted.

`InputError` is raised for bad input anywhere in chaosgrad; the CLI turns it into exit status 2.
"""


class InputError(ValueError):
    """Bad input from a user: the message names what was wrong and what is accepted."""


class LaunchError(RuntimeError):
    """A multi-process launch could not be formed (a peer never joined, the coordinator is
    unreachable, cluster variables without their launcher); the CLI exits with status 3."""


class MissingExtra(InputError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""


def require(module: str, extra: str):
    """Import ``module``, or raise `MissingExtra` naming ``pip install 'chaosgrad[extra]'``.

    The heavy adapters (Brax, jax-md, the digits task) call this, so the core installs light.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(
            f"{module.split('.')[0]} is needed here but cannot be imported "
            f"({e}); install it with: pip install 'chaosgrad[{extra}]'"
        ) from None
