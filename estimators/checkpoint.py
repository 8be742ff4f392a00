"""A meta-training run's folder on disk: the run fingerprint (settings and traced programs,
so a checkpoint resumes only into the same run), the checkpoint's save and checked restore
(across the processes of a `chaosgrad.distributed` launch), and the exclusive lock on the
folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from chaosgrad.estimators.base import Estimator

from chaosgrad import distributed
from chaosgrad.errors import InputError
from chaosgrad.io import (
    check_regular,
    jsonable,
    load_npz,
)
from chaosgrad.system import System

CHECKPOINT = "checkpoint.npz"
LOG = "log.jsonl"
RESULTS = "results.json"
CURVES = "curves.npz"
THETA = "theta.npz"
STEP_FIELDS = ("loss", "grad_norm", "nonfinite_grad", "nonfinite_losses", "skipped")


def _fingerprint(system: System, estimator: Estimator, theta0, key, **settings) -> dict:
    """Everything that changes the result of a run, so a checkpoint is resumed only into
    the same run: the system, the estimator and its parameters, θ0 (shapes and a hash of
    its values), the key, and ``settings`` (outer optimizer, evaluation, logging). The
    total number of steps is left out on purpose: a run may be extended."""
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(theta0)]
    digest = hashlib.sha256()
    for x in leaves:
        digest.update(str((x.shape, x.dtype.str)).encode())
        digest.update(np.ascontiguousarray(x).tobytes())
    key = (
        jax.random.key_data(key)
        if jnp.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key)
        else key
    )
    return jsonable(
        {
            "system": system.describe(),
            "estimator": estimator.name,
            "params": estimator.params,
            "theta": [(list(x.shape), str(x.dtype)) for x in leaves],
            "theta_sha256": digest.hexdigest(),
            "key": np.asarray(key).tolist(),
            **settings,
        }
    )[0]


def _layout_free(text: str) -> str:
    """A program's text without memory addresses and without the device layout (mesh sizes,
    device ids): a run may resume on another number of devices or processes."""
    text = re.sub(r" at 0x[0-9a-fA-F]+", "", text)
    text = re.sub(
        r"Mesh\((?:'[^']*': \d+(?:, )?)+", lambda m: re.sub(r": \d+", ": N", m.group(0)), text
    )
    return re.sub(r"device_ids=\[[^\]]*\]|devices=\[[^\]]*\]", "devices=[…]", text)


def _program_digest(closed) -> str:
    """SHA-256 of a traced program (a ClosedJaxpr): its text, with any memory address taken
    out, and the values of its constants, nested programs' included. Two functions with the
    same digest compute the same thing; a changed global or closure value changes it."""
    h = hashlib.sha256(_layout_free(str(closed)).encode())
    seen: set = set()

    def walk(j):
        if id(j) in seen:
            return
        seen.add(id(j))
        for c in getattr(j, "consts", ()):
            try:
                a = np.asarray(c)
            except Exception:  # noqa: BLE001 -- an array not addressable here: its layout only
                h.update(str((getattr(c, "shape", None), str(getattr(c, "dtype", "")))).encode())
                continue
            h.update(str((a.shape, a.dtype.str)).encode())
            if a.dtype != object:
                h.update(np.ascontiguousarray(a).tobytes())
        inner = getattr(j, "jaxpr", j)
        for eqn in getattr(inner, "eqns", ()):
            for v in eqn.params.values():
                for x in v if isinstance(v, (tuple, list)) else (v,):
                    if hasattr(x, "eqns") or hasattr(x, "consts"):
                        walk(x)

    walk(closed)
    return h.hexdigest()


def _code_fingerprint(system: System, theta0, train_step, train_args) -> dict:
    """Digests of the traced programs a run executes: the system's ``init`` then ``step``
    (what it computes), and the whole outer step (estimator, system and optimizer)."""
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)

    def first_step(k, theta):
        return system.step(system.init(k, theta), theta, k)

    return {
        "system": _program_digest(jax.make_jaxpr(first_step)(key, theta0)),
        "train_step": _program_digest(train_step.trace(*train_args).jaxpr),
    }


def _fingerprint_mismatch(saved: str, now: dict) -> list[str]:
    """The fields in which a saved fingerprint differs from ``now``, as 'name (was, now)'."""
    try:
        old = json.loads(saved)
    except json.JSONDecodeError:
        old = None
    if not isinstance(old, dict):
        return ["fingerprint (unreadable: a checkpoint from an older chaosgrad)"]
    out: list[str] = []
    for k in sorted(set(old) | set(now)):
        if old.get(k) != now.get(k):
            a, b = old.get(k, "(absent)"), now.get(k, "(absent)")
            if isinstance(a, dict) and isinstance(b, dict):
                sub = [j for j in sorted(set(a) | set(b)) if a.get(j) != b.get(j)]
                out.extend(_changed(f"{k}.{j}", a.get(j), b.get(j)) for j in sub)
            else:
                out.append(_changed(k, a, b))
    return out


def _changed(field: str, was, now) -> str:
    # Short values are shown; long ones (a system description, a state layout) only named.
    if field == "code.system":
        return (
            "code.system (the system's init/step compute something else: other "
            "functions, or the same code reading other values)"
        )
    if field == "code.train_step":
        return "code.train_step (the estimator's or optimizer's traced program differs)"
    if len(repr(was)) + len(repr(now)) < 120:
        return f"{field} ({was!r} -> {now!r})"
    return field


class OutputLock:
    """An exclusive lock on an output folder (``.lock`` in it, holding the owner's pid).

    Uses ``fcntl.flock``, which the kernel releases when its holder dies: a lock file left
    by a killed run is taken over, while a live run's lock refuses a second writer with
    its pid, so two runs never splice their files.
    """

    NAME = ".lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self.fd: int | None = None

    def __enter__(self):
        import fcntl

        for _ in range(100):
            check_regular(self.path, "the lock file")
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise InputError(
                    f"{self.path.parent} is in use by another meta-train run "
                    f"(pid {owner}); wait for it to finish or use another "
                    "--out"
                ) from None
            # The holder we waited on unlinks the file as it leaves: a lock on the file we
            # opened is worth nothing if the name now points elsewhere (or nowhere).
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise InputError(
                f"cannot lock {self.path}: it keeps being replaced; is another "
                "program writing into this folder?"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            # Unlink while still holding the lock, so a waiting run cannot lock a file that
            # is about to vanish from the folder.
            try:
                os.unlink(self.path)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        return False


def _restore_checkpoint(ckpt: Path, template, fingerprint: str, resume: bool):
    """(host leaves, step, records, evals) of the checkpoint to resume, or None to start
    fresh (deleting an old checkpoint when ``resume`` is False).

    Process 0 reads and checks the file; its verdict (an error, nothing, or the step and
    history) and the arrays are sent to every process, which all raise the same InputError
    or resume from the same bits."""
    leaves_like = jax.tree_util.tree_leaves(template)
    found = None
    header: dict = {"error": "", "found": False}
    if distributed.is_main_process():
        try:
            if not resume or not ckpt.exists():
                # Starting over: the old run's outputs go before the first step, so a run
                # stopped before its first checkpoint never looks like the old one finished.
                _remove_outputs(ckpt.parent)
            if resume and ckpt.exists():
                found = _load_checkpoint(ckpt, template, fingerprint)
                header.update(found=True, start=found[1], records=found[2], evals=found[3])
        except InputError as e:
            header["error"] = str(e)
    header = json.loads(distributed.broadcast_text(json.dumps(header)))
    if header["error"]:
        raise InputError(header["error"])
    if not header["found"]:
        return None
    arrays = None if found is None else [np.asarray(x) for x in jax.tree_util.tree_leaves(found[0])]
    host = distributed.broadcast_arrays(arrays, leaves_like)
    host = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), host)
    return host, header["start"], header["records"], header["evals"]


def _remove_outputs(out: Path) -> None:
    """Delete a previous run's files in ``out`` (the checkpoint first: a stop halfway leaves
    no checkpoint, so the next run starts over and removes the rest)."""
    for name in (CHECKPOINT, RESULTS, THETA, CURVES, LOG):
        try:
            (out / name).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise InputError(
                f"cannot remove {out / name} of an earlier run before starting "
                f"over ({e.strerror}); remove it or use another --out"
            ) from None


def _load_checkpoint(ckpt: Path, template, fingerprint: str):
    """(state, step, records, evals) from ``ckpt``, checked against the run's fingerprint
    and the shapes of its state; any damage is an InputError naming the file and the way
    out."""
    recover = "pass --no-resume (resume=False) or delete it to start over"
    try:
        z = load_npz(ckpt)
    except InputError:
        raise InputError(
            f"the checkpoint {ckpt} is damaged (not a readable .npz archive); {recover}"
        ) from None
    leaves, treedef = jax.tree_util.tree_flatten(template)
    need = ["fingerprint", "step", "history"] + [f"leaf_{i}" for i in range(len(leaves))]
    missing = [k for k in need if k not in z]
    if missing:
        raise InputError(
            f"the checkpoint {ckpt} lacks {', '.join(missing[:3])}: it is damaged "
            f"or from another chaosgrad; {recover}"
        )
    diff = _fingerprint_mismatch(str(z["fingerprint"]), json.loads(fingerprint))
    if diff:
        raise InputError(
            f"the checkpoint {ckpt} comes from a different run: {'; '.join(diff)}; "
            "run with the same settings to resume, or pass --no-resume "
            "(resume=False) to start over in this folder"
        )
    for i, leaf in enumerate(leaves):
        a = z[f"leaf_{i}"]
        if a.shape != leaf.shape or not np.can_cast(a.dtype, leaf.dtype, "same_kind"):
            raise InputError(
                f"the checkpoint {ckpt} holds leaf_{i} as {a.dtype}{list(a.shape)}"
                f", expected {leaf.dtype}{list(leaf.shape)}; {recover}"
            )
    n_theta = len(jax.tree_util.tree_leaves(template[0]))
    for i in range(n_theta):
        a = z[f"leaf_{i}"]
        if np.issubdtype(a.dtype, np.inexact) and not np.all(np.isfinite(a)):
            raise InputError(
                f"the checkpoint {ckpt} holds a non-finite theta (leaf_{i}); "
                f"training never saves one, so it is damaged; {recover}"
            )
    cur = tuple(
        jax.tree_util.tree_unflatten(
            treedef,
            [jnp.asarray(z[f"leaf_{i}"], dtype=leaf.dtype) for i, leaf in enumerate(leaves)],
        )
    )
    try:
        step = z["step"]
        if step.shape != () or not np.issubdtype(step.dtype, np.integer):
            raise TypeError("step")
        start = int(step)
        saved = json.loads(str(z["history"]))
        records, evals = saved["records"], saved["evals"]
        _check_history(records, evals)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise InputError(
            f"the checkpoint {ckpt} has an unreadable step or history; {recover}"
        ) from None
    if not 0 <= start <= len(records):
        raise InputError(
            f"the checkpoint {ckpt} is inconsistent (step {start}, "
            f"{len(records)} records); {recover}"
        )
    return cur, start, records[:start], evals


def _check_history(records, evals) -> None:
    """TypeError unless ``records`` and ``evals`` have the layout `_meta_train` writes."""

    def number(x, nullable=False):
        return (x is None and nullable) or (isinstance(x, (int, float)) and not isinstance(x, bool))

    if not isinstance(records, list) or not isinstance(evals, list):
        raise TypeError("history")
    for r in records:
        if not isinstance(r, dict) or not all(
            number(r.get(k), k in ("loss", "grad_norm")) for k in STEP_FIELDS
        ):
            raise TypeError("record")
    for e in evals:
        if not (
            isinstance(e, dict)
            and isinstance(e.get("step"), int)
            and not isinstance(e.get("step"), bool)
            and number(e.get("meta_loss"), True)
            and isinstance(e.get("nonfinite"), int)
        ):
            raise TypeError("evaluation")
