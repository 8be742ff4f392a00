"""Multi-process runs on localhost: launch resolution, populations across processes equal to
one process's (2 processes × 2 CPU devices vs 1 process × 4 devices, float64), and
meta-training under a 2-process launch (bit-identical to one process, resumable, and a
dead peer stopping the others).

Every launch runs subprocesses with free ports and hard timeouts: a hang fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chaosgrad import distributed
from chaosgrad.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
TIMEOUT = 240  # seconds for a whole launch; a hang past it fails the test


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    flags = os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}"
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CHAOSGRAD_", "SLURM_", "OMPI_"))
    }
    env.update(
        XLA_FLAGS=flags,
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def launch(
    args: list[str],
    processes: int,
    devices: int,
    timeout: float = TIMEOUT,
    script: Path = WORKER,
    env_extra: dict | None = None,
) -> list:
    """Run ``script args`` as ``processes`` processes of ``devices`` CPU devices each on
    localhost (one plain process when ``processes`` is 1); kill them all past ``timeout``."""
    port = free_port()
    procs = []
    for i in range(processes):
        extra = dict(env_extra or {})
        if processes > 1:
            extra.update(
                CHAOSGRAD_COORDINATOR=f"127.0.0.1:{port}",
                CHAOSGRAD_NUM_PROCESSES=processes,
                CHAOSGRAD_PROCESS_ID=i,
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), *args],
                env=_env(devices, **extra),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
        )
    return _collect(procs, timeout)


def _collect(procs, timeout):
    deadline = time.monotonic() + timeout
    out = []
    try:
        for p in procs:
            so, se = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            out.append(subprocess.CompletedProcess(p.args, p.returncode, so, se))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        pytest.fail(f"a multi-process launch did not finish within {timeout} s")
    return out


def _ok(results):
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i} failed:\n{r.stderr[-3000:]}"


# -- resolving a launch --------------------------------------------------------------------------
def test_resolve_launch_single_process_and_arguments():
    assert distributed.resolve_launch(env={}) is None
    assert distributed.resolve_launch(num_processes=1, env={}) is None
    got = distributed.resolve_launch("10.0.0.1:6789", 4, 3, env={})
    assert got == distributed.Launch("10.0.0.1:6789", 4, 3, "arguments")
    env = {
        "CHAOSGRAD_COORDINATOR": "node1:1234",
        "CHAOSGRAD_NUM_PROCESSES": "2",
        "CHAOSGRAD_PROCESS_ID": "1",
    }
    assert distributed.resolve_launch(env=env) == distributed.Launch(
        "node1:1234", 2, 1, "environment"
    )
    # An explicit argument overrides its variable; the others still come from the environment.
    assert distributed.resolve_launch(process_id=0, env=env).process_id == 0


def test_resolve_launch_clusters():
    slurm = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_JOB_ID": "1"}
    assert distributed.resolve_launch(env=slurm).source == "slurm"
    assert distributed.resolve_launch(env={"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) is None
    assert distributed.resolve_launch(env={"OMPI_COMM_WORLD_SIZE": "4"}).source == "mpi"
    # A coordinator named by hand, the count and rank from the launcher (OpenMPI 5).
    ompi = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2"}
    assert distributed.resolve_launch("n0:7000", env=ompi) == distributed.Launch(
        "n0:7000", 4, 2, "arguments"
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"coordinator": "h:1", "num_processes": 2, "process_id": 2}, r"in \[0, 1\]"),
        ({"coordinator": "h:1", "num_processes": 2, "process_id": -1}, r"in \[0, 1\]"),
        ({"coordinator": "h:1", "num_processes": 0, "process_id": 0}, "at least 1"),
        ({"num_processes": 2, "process_id": 0}, "coordinator"),
        ({"coordinator": "h:1", "num_processes": 2}, "process's id"),
        ({"coordinator": "h:1", "process_id": 0}, "process count"),
        ({"coordinator": "nohost", "num_processes": 2, "process_id": 0}, "host:port"),
        ({"coordinator": "h:99999", "num_processes": 2, "process_id": 0}, "host:port"),
        ({"coordinator": "h:1", "num_processes": "two", "process_id": 0}, "integer"),
    ],
)
def test_resolve_launch_refuses_bad_input(kwargs, match):
    with pytest.raises(InputError, match=match):
        distributed.resolve_launch(**kwargs, env={})


def test_population_devices_one_process():
    import jax

    devs = distributed.population_devices(6)
    assert len(devs) == max(k for k in range(1, jax.local_device_count() + 1) if 6 % k == 0)


# -- populations across processes -------------------------------------------------------------
def _estimates(tmp_path, names, processes, devices):
    out = tmp_path / f"est_{processes}x{devices}.json"
    _ok(launch(["estimates", str(out), ",".join(names)], processes, devices))
    return json.loads(out.read_text())


def _compare_layouts(tmp_path, names):
    one = _estimates(tmp_path, names, 1, 4)
    two = _estimates(tmp_path, names, 2, 2)
    assert (one["processes"], one["devices"]) == (1, 4)
    assert (two["processes"], two["devices"], two["local_devices"]) == (2, 4, 2)
    diffs = {}
    for name in names:
        a, b = one[name], two[name]
        d = max(
            float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
            for x, y in zip(a["grads"], b["grads"], strict=True)
        )
        scale = max(float(np.max(np.abs(np.asarray(x)))) for x in a["grads"])
        assert scale > 1e-3, (name, scale)  # a zero gradient would compare equal trivially
        assert d <= 1e-12, (name, d)
        np.testing.assert_allclose(a["losses"], b["losses"], rtol=0, atol=1e-12)
        # Truncated estimators keep a population that spans both processes' devices.
        if "state" in a and a["state"]:
            assert b["state_devices"] == 4, (name, b["state_devices"])
            for x, y in zip(a["state"], b["state"], strict=True):
                np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-12)
        diffs[name] = d
    print("max |2 processes x 2 devices - 1 process x 4 devices|:", diffs)
    return diffs


def test_two_processes_equal_one_process(tmp_path):
    _compare_layouts(tmp_path, ["pes", "es", "backprop"])


@pytest.mark.slow
def test_two_processes_equal_one_process_all_estimators(tmp_path):
    from chaosgrad import estimators

    _compare_layouts(tmp_path, estimators.names())


# -- meta-training across processes -------------------------------------------------------------
META_ARGS = [
    "meta-train",
    "rnn",
    "--param",
    "n=4",
    "--param",
    "g=1.5",
    "--param",
    "dtype=float64",
    "--estimator",
    "pes",
    "--est-param",
    "pairs=4",
    "--est-param",
    "window=3",
    "--est-param",
    "horizon=8",
    "--steps",
    "6",
    "--log-every",
    "2",
    "--checkpoint-every",
    "2",
    "--eval-seeds",
    "2",
    "--lr",
    "0.01",
    "--json",
    "--no-progress",
    "--timeout",
    "20",
]


def _meta(out, processes, devices, **env):
    return launch(
        ["cli", *META_ARGS, "--out", str(out)],
        processes,
        devices,
        env_extra={"JAX_ENABLE_X64": 1, **env},
    )


def _theta(folder):
    with np.load(folder / "theta.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.mark.slow
def test_meta_train_two_processes_equal_one_and_resume_after_a_death(tmp_path):
    one, two, cut = tmp_path / "one", tmp_path / "two", tmp_path / "cut"
    _ok(_meta(one, 1, 4))
    res = _meta(two, 2, 2)
    _ok(res)
    summary = json.loads(res[0].stdout.strip().splitlines()[-1])
    assert (summary["processes"], summary["devices"], summary["steps_done"]) == (2, 4, 6)
    # Only process 0 reports (gloo's own connection lines aside).
    assert [x for x in res[1].stdout.splitlines() if not _gloo_line(x)] == []
    a, b = _theta(one), _theta(two)
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a)
    print("max |theta 2 processes - theta 1 process| after 6 PES steps:", diff)
    assert diff <= 1e-12
    assert not np.array_equal(a["theta"], np.asarray(0.0))

    # Process 1 dies (SIGKILL) right after step 3: process 0 must stop with a clear message
    # well within the launch timeout, and the step-2 checkpoint must be whole.
    t0 = time.monotonic()
    dead = _meta(cut, 2, 2, CHAOSGRAD_TEST_DIE_AT=3, CHAOSGRAD_TEST_DIE_ID=1)
    assert dead[1].returncode == -signal.SIGKILL
    assert dead[0].returncode == 3, dead[0].stderr[-2000:]
    assert "lost contact with another process" in dead[0].stderr
    assert time.monotonic() - t0 < 120
    with np.load(cut / "checkpoint.npz") as z:
        assert int(z["step"]) == 2

    # The coordinator's death (process 0) stops process 1 the same way.
    dead0 = _meta(tmp_path / "cut0", 2, 2, CHAOSGRAD_TEST_DIE_AT=3, CHAOSGRAD_TEST_DIE_ID=0)
    assert dead0[0].returncode == -signal.SIGKILL
    assert dead0[1].returncode == 3, dead0[1].stderr[-2000:]
    assert "process 1 of 2 lost contact with another process" in dead0[1].stderr

    # Relaunched, both resume from the checkpoint and end bit-identical to the unbroken run.
    _ok(_meta(cut, 2, 2))
    c = _theta(cut)
    for k in b:
        np.testing.assert_array_equal(c[k], b[k])
    assert (cut / "log.jsonl").read_text() == (two / "log.jsonl").read_text()

    # SIGTERM to process 1 after step 3: both stop after step 3 (status 130), the checkpoint
    # holds step 3, and the resumed run ends bit-identical too.
    term = tmp_path / "term"
    stopped = _meta(term, 2, 2, CHAOSGRAD_TEST_TERM_AT=3, CHAOSGRAD_TEST_DIE_ID=1)
    assert [r.returncode for r in stopped] == [130, 130], [r.stderr[-1500:] for r in stopped]
    with np.load(term / "checkpoint.npz") as z:
        assert int(z["step"]) == 3
    _ok(_meta(term, 2, 2))
    t = _theta(term)
    for k in b:
        np.testing.assert_array_equal(t[k], b[k])


def test_meta_train_cli_refuses_bad_launch_arguments(tmp_path):
    from chaosgrad.app.cli import main

    base = ["meta-train", "linear", "--steps", "1", "--out", str(tmp_path / "x")]
    assert (
        main(base + ["--num-processes", "2", "--process-id", "2", "--coordinator", "127.0.0.1:1"])
        == 2
    )
    assert main(base + ["--num-processes", "2", "--process-id", "0"]) == 2


# -- figures across processes ---------------------------------------------------------------
@pytest.mark.slow
def test_figure_parts_split_over_two_processes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(launch(["figure", str(one)], 1, 4))
    _ok(launch(["figure", str(two)], 2, 2))
    with np.load(one / "toy" / "results.npz") as a, np.load(two / "toy" / "results.npz") as b:
        assert sorted(a.files) == sorted(b.files)
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    assert (two / "toy" / "toy.png").stat().st_size > 0
    # Only process 0 keeps parts: the 6 parts of the sweep, each made by one process.
    assert len(list((two / "toy" / "parts").glob("*.npz"))) == 6
    # A chain whose part i needs part i - 1 still ends right, its parts made alternately.
    a = json.loads((one / "chain.json").read_text())
    b = json.loads((two / "chain.json").read_text())
    np.testing.assert_array_equal(a["x"], b["x"])
    assert a["owners"] == [0] * 5 and b["owners"] == [0, 1, 0, 1, 0]


# -- compare across processes ---------------------------------------------------------------
@pytest.mark.slow
def test_compare_shared_out_over_two_processes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    _ok(launch(["compare", str(one)], 1, 4))
    _ok(launch(["compare", str(two)], 2, 2))
    a = json.loads((one / "compare.json").read_text())
    b = json.loads((two / "compare.json").read_text())
    assert a["reference"] == b["reference"]
    by_a = {e["name"]: e for e in a["estimators"]}
    by_b = {e["name"]: e for e in b["estimators"]}
    assert sorted(by_a) == sorted(by_b) == ["backprop", "es", "pes"]
    for name in by_a:
        assert by_a[name]["samples"] == by_b[name]["samples"] == 8
        for k in ("bias", "variance"):  # the estimates themselves; seconds differ
            for end in ("value", "low", "high"):
                x, y = by_a[name][k][end], by_b[name][k][end]
                assert y == pytest.approx(x, rel=1e-9, abs=1e-300), (name, k, end, x, y)
    assert (two / "compare.png").stat().st_size > 10_000


def _gloo_line(line: str) -> bool:
    """gloo's own connection report ("[Gloo] Rank 1 is connected to 1 peer ranks. ..."),
    which it writes from C++ and which can reach the pipe split in two lines."""
    return line.startswith("[Gloo]") or "connected to" in line and "peer ranks" in line
