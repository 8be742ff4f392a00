"""The `chaosgrad` command: systems, spectra, gradient growth, diagnose, compare, meta-train,
figures, the demo. Bad input exits with status 2 and one line naming what was wrong; a
failure inside chaosgrad exits with status 3 and says it is internal.

Here: `main` and its exit statuses. The parser is in `chaosgrad.app.cli_parser` (argument
types in `chaosgrad.app.cli_types`), the handlers in `chaosgrad.app.commands`, the output
checks in `chaosgrad.app.output` and the demo in `chaosgrad.app.demo`; every name stays
importable from here.
"""

from __future__ import annotations

import os
import sys
import warnings

from chaosgrad.app.cli_parser import _add_system_args, _Parser, build_parser  # noqa: F401
from chaosgrad.app.cli_types import (  # noqa: F401 -- re-exported
    MAX_SEED,
    MAX_STEPS,
    _finite_float,
    _int_list,
    _k_arg,
    _nonneg_int,
    _parse_int,
    _positive_int,
    _seed,
)
from chaosgrad.app.commands import (  # noqa: F401 -- re-exported
    _check_memory,
    _fmt,
    _key,
    _make_system,
    _run_record,
    _save_and_print,
    _tree_bytes,
    cmd_compare,
    cmd_diagnose,
    cmd_figures,
    cmd_grad_growth,
    cmd_spectrum,
    cmd_systems,
)
from chaosgrad.app.demo import cmd_demo
from chaosgrad.app.output import (  # noqa: F401 -- re-exported
    _check_writable,
    check_out_dir,
    check_out_file,
    check_outputs,
    default_out,
    json_output,
)
from chaosgrad.config import enable_compilation_cache, enable_x64
from chaosgrad.errors import InputError, LaunchError

# Everything that computes (JAX, the systems, the estimators, matplotlib, scipy) is imported
# inside the command that needs it: `chaosgrad --version` and `chaosgrad systems` start in
# well under a second and a half.

INTERNAL_ERROR = 3  # exit status of a failure inside chaosgrad (2 is bad input)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"chaosgrad: {category.__name__}: {message}", file=file or sys.stderr)


COMMANDS = {
    "systems": cmd_systems,
    "spectrum": cmd_spectrum,
    "grad-growth": cmd_grad_growth,
    "diagnose": cmd_diagnose,
    "figures": cmd_figures,
    "compare": cmd_compare,
    "demo": cmd_demo,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `chaosgrad` command; returns the exit status."""
    if sys.stdout is None:  # started with stdout closed (`chaosgrad ... >&-`)
        if sys.stderr is not None:
            print(
                "chaosgrad: error: standard output is closed; redirect it (e.g. "
                ">/dev/null) instead of closing it",
                file=sys.stderr,
            )
        return 2
    # the command only writes files; never open a window (set before matplotlib loads, so
    # that commands which draw nothing never import it)
    if "matplotlib" in sys.modules:
        sys.modules["matplotlib"].use("Agg")
    else:
        os.environ["MPLBACKEND"] = "Agg"
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "systems":  # `systems` computes nothing: no JAX at all
        if getattr(args, "x64", False):
            enable_x64()
        enable_compilation_cache()
    handler = COMMANDS.get(args.command) or getattr(args, "func", None)

    def fail(message: str) -> int:
        text = " ".join(str(message).split())  # one line, whatever the message holds
        print(f"chaosgrad {args.command}: error: {text}", file=sys.stderr)
        return 2

    def internal(e: BaseException) -> int:
        # Not bad input: a failure inside chaosgrad (or inside the system's own code). Its
        # own status and words, so a user does not go looking for a mistake in the command.
        import traceback

        if os.environ.get("CHAOSGRAD_TRACEBACK"):
            traceback.print_exception(e, file=sys.stderr)
        text = " ".join(f"{type(e).__name__}: {e}".split())
        print(
            f"chaosgrad {args.command}: internal error (not a problem with the input): "
            f"{text}. Results saved before it are kept; set CHAOSGRAD_TRACEBACK=1 for the "
            "traceback and please report it.",
            file=sys.stderr,
        )
        return INTERNAL_ERROR

    try:
        check_outputs(args)  # a bad --out/--plot fails now, not after minutes of compute
        with warnings.catch_warnings(), json_output(getattr(args, "json", False)):
            warnings.showwarning = _show_warning
            status = int(handler(args) or 0)
        sys.stdout.flush()
        return status
    except InputError as e:
        return fail(e)
    except LaunchError as e:  # a multi-process launch that never formed: status 3
        fail(e)
        return 3
    except KeyboardInterrupt:
        print(f"chaosgrad {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`chaosgrad systems --json | head`): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError:
        return fail("out of memory; ask for less (fewer seeds, steps or a smaller system)")
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return fail(f"{e.strerror or e}{where}")
    except RuntimeError as e:
        # XLA reports a failed device allocation as a RuntimeError (XlaRuntimeError).
        if "RESOURCE_EXHAUSTED" in str(e):
            return fail(
                "out of device memory; ask for less (fewer seeds, steps or a smaller system)"
            )
        # Under a multi-process launch a failed collective means a peer died: stop now with
        # one line rather than wait out the shutdown handshake with the dead peer.
        import jax

        from chaosgrad import distributed

        if isinstance(e, jax.errors.JaxRuntimeError) and distributed.is_initialized():
            distributed.exit_after_peer_failure(
                e,
                f"chaosgrad {args.command}",
                "Run the same command on every process "
                "again to resume (saved checkpoints and figure parts are reused).",
            )
        return internal(e)
    except Exception as e:  # noqa: BLE001 - anything else is ours, never "bad input"
        return internal(e)


if __name__ == "__main__":
    sys.exit(main())
