"""Running across processes and hosts with `jax.distributed`: resolving a launch (explicit
arguments, CHAOSGRAD_* variables, SLURM, OpenMPI), initialising it with timeouts, the global
population mesh, and moving pytrees between global arrays and every process's host memory.

One process with one or many local devices is the case with no launch: every helper here
then does what the single-process code did (the mesh spans the local devices, nothing
crosses a process).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from chaosgrad._types import PyTree
from chaosgrad.config import LAUNCH_TIMEOUT
from chaosgrad.errors import InputError, LaunchError

POPULATION_AXIS = "population"

ENV_COORDINATOR = "CHAOSGRAD_COORDINATOR"
ENV_NUM_PROCESSES = "CHAOSGRAD_NUM_PROCESSES"
ENV_PROCESS_ID = "CHAOSGRAD_PROCESS_ID"
ENV_TIMEOUT = "CHAOSGRAD_TIMEOUT"
#: Seconds to wait for every process to join, and for a silent peer before it is called
#: dead (then the survivors stop with the coordination service's error instead of hanging
#: in a collective).
DEFAULT_TIMEOUT = LAUNCH_TIMEOUT  # seconds to wait for every process to join


class Launch(NamedTuple):
    """How this process was launched.

    Attributes:
      coordinator: ``host:port`` of process 0's coordination service, or None when the
        cluster's own variables name it (SLURM, OpenMPI: `jax.distributed` reads them).
      num_processes: how many processes take part (None: read by `jax.distributed`).
      process_id: this process's index in [0, num_processes) (None: as above).
      source: where the settings came from: "arguments", "environment", "slurm", "mpi".
    """

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    source: str


def _int(value, name: str) -> int:
    try:
        x = int(str(value).strip())
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer, got {value!r}") from None
    return x


def _check_coordinator(address: str, name: str) -> str:
    host, sep, port = str(address).strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"{name} must be host:port (e.g. 10.0.0.1:6789), got {address!r}")
    return f"{host}:{port}"


def resolve_launch(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Launch | None:
    """The launch this process is part of, or None for a single process.

    Explicit arguments win; each one left None is read from CHAOSGRAD_COORDINATOR,
    CHAOSGRAD_NUM_PROCESSES and CHAOSGRAD_PROCESS_ID. When none of these is set, a SLURM
    step with several tasks (``srun``: SLURM_NTASKS > 1) or an OpenMPI launch
    (OMPI_COMM_WORLD_SIZE > 1) is detected and left to `jax.distributed`'s own cluster
    detection. When only the coordinator is given, the count and id come from SLURM
    (SLURM_NTASKS, SLURM_PROCID) or OpenMPI (OMPI_COMM_WORLD_SIZE, OMPI_COMM_WORLD_RANK),
    for launchers whose coordinator JAX cannot find (OpenMPI 5). A process count of 1 is a
    single process (None).

    Raises InputError for a count below 1, an id outside [0, count), a malformed
    ``host:port``, or a partial set (a count above 1 with no coordinator or no id).
    """
    env = os.environ if env is None else env
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    from_env = {
        "coordinator": env.get(ENV_COORDINATOR) or None,
        "num_processes": env.get(ENV_NUM_PROCESSES) or None,
        "process_id": env.get(ENV_PROCESS_ID) or None,
    }
    if any(v is not None for v in given.values()):
        source = "arguments"
    elif any(v is not None for v in from_env.values()):
        source = "environment"
    else:
        if _int(env.get("SLURM_NTASKS", "1") or 1, "SLURM_NTASKS") > 1 and "SLURM_PROCID" in env:
            return Launch(None, None, None, "slurm")
        if _int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1, "OMPI_COMM_WORLD_SIZE") > 1:
            return Launch(None, None, None, "mpi")
        return None
    vals: dict[str, Any] = {k: given[k] if given[k] is not None else from_env[k] for k in given}
    for count, rank in (
        ("SLURM_NTASKS", "SLURM_PROCID"),
        ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
    ):
        if (
            vals["num_processes"] is None
            and vals["process_id"] is None
            and count in env
            and rank in env
        ):
            vals["num_processes"], vals["process_id"] = env[count], env[rank]
    where = {
        "coordinator": f"--coordinator / {ENV_COORDINATOR}",
        "num_processes": f"--num-processes / {ENV_NUM_PROCESSES}",
        "process_id": f"--process-id / {ENV_PROCESS_ID}",
    }
    if vals["num_processes"] is None:
        raise InputError(
            f"a multi-process launch needs the process count "
            f"({where['num_processes']}) besides the coordinator and process id"
        )
    n = _int(vals["num_processes"], where["num_processes"])
    if n < 1:
        raise InputError(f"{where['num_processes']} must be at least 1, got {n}")
    pid = 0 if vals["process_id"] is None and n == 1 else vals["process_id"]
    if pid is None:
        raise InputError(
            f"{n} processes need this process's id ({where['process_id']}, 0 to {n - 1})"
        )
    pid = _int(pid, where["process_id"])
    if not 0 <= pid < n:
        raise InputError(
            f"{where['process_id']} must be in [0, {n - 1}] for {n} processes, got {pid}"
        )
    if n == 1:
        return None
    if vals["coordinator"] is None:
        raise InputError(
            f"{n} processes need the coordinator's address "
            f"({where['coordinator']}, host:port of process 0)"
        )
    return Launch(_check_coordinator(vals["coordinator"], where["coordinator"]), n, pid, source)


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> Launch | None:
    """Join the multi-process run this process belongs to (see `resolve_launch`); a no-op
    returning None for a single process, and for a second call.

    Must run before any JAX computation. On CPU, cross-process collectives use gloo.
    ``timeout`` (default CHAOSGRAD_TIMEOUT, else 120 s) bounds the wait for every process
    to join, and the silence after which a peer is declared dead: a process that dies then
    stops the others with an error rather than leaving them blocked forever.
    """
    launch = resolve_launch(coordinator, num_processes, process_id, env)
    if launch is None or is_initialized():
        return launch
    env = os.environ if env is None else env
    t = timeout if timeout is not None else env.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT
    try:
        t = int(float(t))
    except (TypeError, ValueError):
        raise InputError(f"timeout must be a number of seconds, got {t!r}") from None
    if t < 1:
        raise InputError(f"timeout must be at least 1 second, got {t}")
    if launch.source == "slurm":
        missing = [
            v for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_LOCALID") if v not in env
        ]
        if missing:
            raise LaunchError(
                f"SLURM_NTASKS={env.get('SLURM_NTASKS')} asks for a multi-process launch, "
                f"but this process was not started by srun (no {', '.join(missing)}): run "
                "it as `srun chaosgrad ...`, or unset SLURM_NTASKS to run one process"
            )
    where = (
        f"coordinator {launch.coordinator}" if launch.coordinator else f"the {launch.source} launch"
    )
    who = (
        f"process {launch.process_id} of {launch.num_processes}"
        if launch.num_processes
        else "this process"
    )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    # JAX aborts the whole process (a C++ stack, status -6) when joining times out; our own
    # watchdog ends it first, at ``t``, with one line and status 3.
    joined = threading.Event()

    def watchdog():
        if not joined.wait(t):
            print(
                f"chaosgrad: error: {who} could not join {where} within {t} s: a peer "
                "never joined or the coordinator cannot be reached; start every process "
                "with the same coordinator and process count (or raise --timeout)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(3)

    threading.Thread(target=watchdog, name="chaosgrad-join-watchdog", daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=launch.coordinator,
            num_processes=launch.num_processes,
            process_id=launch.process_id,
            initialization_timeout=t + 60,
            heartbeat_timeout_seconds=t,
            shutdown_timeout_seconds=t,
        )
    except Exception as e:  # noqa: BLE001 -- any failure to join is a launch failure
        first = " ".join(str(e).split())[:300]
        raise LaunchError(f"{who} could not join {where}: {type(e).__name__}: {first}") from None
    finally:
        joined.set()
    return launch


def is_initialized() -> bool:
    """Whether `jax.distributed` has been initialised in this process."""
    return jax.distributed.is_initialized()


_LOCAL_DEPTH = [0]


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Inside, this process works alone: populations use its own devices only, and the
    helpers here (`process_count`, `to_host`, `any_process`, ...) act as on one process.
    For work that one process does by itself while the others do other work (a part of a
    figure), where a collective would wait forever for processes that never join it."""
    _LOCAL_DEPTH[0] += 1
    try:
        yield
    finally:
        _LOCAL_DEPTH[0] -= 1


def process_count() -> int:
    """How many processes work together here (1 inside `local_only`)."""
    return 1 if _LOCAL_DEPTH[0] else jax.process_count()


def process_index() -> int:
    """This process's index among them (0 inside `local_only`)."""
    return 0 if _LOCAL_DEPTH[0] else jax.process_index()


def is_main_process() -> bool:
    """True on process 0 (the one that writes files and draws figures), and inside
    `local_only`."""
    return process_index() == 0


# -- the population mesh ------------------------------------------------------------------
def population_devices(n: int) -> list:
    """The devices a population of ``n`` is split over: every device of every process.

    The largest k ≤ the local device count is used from each process such that
    k × processes divides ``n`` (on one process: the largest count of local devices that
    divides ``n``). Every process takes part, since each runs the same program.
    Raises InputError when ``n`` is not a multiple of the process count.
    """
    procs = process_count()
    local = jax.local_device_count()
    if procs == 1:
        devs = jax.local_devices()
        return devs[: max(k for k in range(1, len(devs) + 1) if n % k == 0)]
    if n % procs:
        raise InputError(
            f"a population of {n} cannot be split over {procs} processes: use a "
            f"multiple of {procs} (pairs, samples or particles)"
        )
    k = max(j for j in range(1, local + 1) if n % (j * procs) == 0)
    by_proc: dict[int, list] = {}
    for d in jax.devices():
        by_proc.setdefault(d.process_index, []).append(d)
    return [d for p in sorted(by_proc) for d in by_proc[p][:k]]


def population_sharding(n: int) -> NamedSharding:
    """A sharding of a leading population axis of size ``n`` over `population_devices`."""
    mesh = Mesh(np.asarray(population_devices(n)), (POPULATION_AXIS,))
    return NamedSharding(mesh, P(POPULATION_AXIS))


def replicated_sharding() -> NamedSharding:
    """A sharding that holds a whole copy of an array on every device of every process
    (of this process inside `local_only`)."""
    devices = jax.devices() if process_count() > 1 else jax.local_devices()
    return NamedSharding(Mesh(np.asarray(devices), (POPULATION_AXIS,)), P())


# -- between global arrays and host memory --------------------------------------------------
def to_host(tree: PyTree) -> PyTree:
    """Every leaf as a whole numpy array on every process (a collective when a leaf is split
    over processes: every process must call it)."""
    from jax.experimental import multihost_utils

    def one(x):
        if (
            isinstance(x, jax.Array)
            and not x.is_fully_addressable
            and not x.is_fully_replicated
            and process_count() > 1
        ):
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree_util.tree_map(one, tree)


def from_host(tree: PyTree, like: PyTree) -> PyTree:
    """Host arrays ``tree`` (the same whole values on every process) placed as global arrays
    with the shardings of ``like`` (arrays, or shape structs carrying a ``sharding``); a leaf
    of ``like`` without a sharding is placed replicated."""

    def one(x, ref):
        x = np.asarray(x, dtype=ref.dtype)
        sharding = getattr(ref, "sharding", None) or replicated_sharding()
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree_util.tree_map(one, tree, like)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op on one process)."""
    if process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is True on any process (a collective on several processes: every
    process must call it at the same point)."""
    if process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray(int(bool(flag)), np.int32))
    return bool(np.any(np.asarray(flags)))


def broadcast_text(text: str | None) -> str:
    """Process 0's ``text`` on every process (others pass anything; a collective)."""
    if process_count() == 1:
        return text or ""
    from jax.experimental import multihost_utils

    data = (text or "").encode() if is_main_process() else b""
    n = int(multihost_utils.broadcast_one_to_all(np.asarray(len(data), np.int32)))
    buf = np.zeros(n + 1, np.uint8)  # one spare byte: an empty array cannot be broadcast
    if is_main_process():
        buf[:n] = np.frombuffer(data, np.uint8)
    return bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))[:n]).decode()


def broadcast_arrays(arrays: list | None, like: list) -> list[np.ndarray]:
    """Process 0's host ``arrays`` on every process, bit for bit (sent as raw bytes, so a
    −0.0 or a NaN payload survives); other processes pass None. ``like`` gives every
    array's shape and dtype on every process. A collective on several processes."""
    if process_count() == 1:
        assert arrays is not None  # the one process is process 0
        return [np.asarray(a, dtype=r.dtype) for a, r in zip(arrays, like, strict=True)]
    from jax.experimental import multihost_utils

    sizes = [int(np.prod(r.shape)) * np.dtype(r.dtype).itemsize for r in like]
    buf = np.zeros(sum(sizes) + 1, np.uint8)
    if is_main_process():
        assert arrays is not None  # process 0 passes them
        buf[:-1] = np.concatenate(
            [
                np.ascontiguousarray(np.asarray(a, dtype=r.dtype)).reshape(-1).view(np.uint8)
                for a, r in zip(arrays, like, strict=True)
            ]
            or [np.zeros(0, np.uint8)]
        )
    buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
    out, at = [], 0
    for r, s in zip(like, sizes, strict=True):
        out.append(buf[at : at + s].view(np.dtype(r.dtype)).reshape(r.shape).copy())
        at += s
    return out


def exit_after_peer_failure(error: BaseException, command: str, advice: str) -> None:
    """Stop this process at once after a computation across processes failed (typically
    because another process died): print one clear line to stderr and exit with status 3,
    without the shutdown handshake, which would wait for the dead peer and then abort."""
    first = " ".join(str(error).split())[:300]
    print(
        f"{command}: error: process {process_index()} of {process_count()} lost "
        f"contact with another process, which died or was stopped ({first}). {advice}",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(3)


def allgather_bytes(data: bytes) -> list[bytes]:
    """Every process's ``data``, in process order, on every process (a collective)."""
    if process_count() == 1:
        return [bytes(data)]
    from jax.experimental import multihost_utils

    sizes = np.asarray(multihost_utils.process_allgather(np.asarray(len(data), np.int32)))
    buf = np.zeros(int(sizes.max()) + 1, np.uint8)
    buf[: len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buf[None], tiled=True))
    return [rows[i, : int(n)].tobytes() for i, n in enumerate(sizes.reshape(-1))]
