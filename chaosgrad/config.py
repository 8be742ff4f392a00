"""Process-wide JAX settings chaosgrad relies on: float64, the persistent compilation cache.

Also `precision_info`, the precision facts recorded with every result. Importing this module
does not import JAX (the command line starts without it); each function imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

LAUNCH_TIMEOUT = 120  # seconds a multi-process launch waits for its peers (CHAOSGRAD_TIMEOUT)


def enable_x64(enable: bool = True) -> None:
    """Turn JAX's float64 mode on (or off). Arrays made before keep their dtype."""
    import jax

    jax.config.update("jax_enable_x64", bool(enable))


def x64_enabled() -> bool:
    """Whether JAX's float64 mode is on."""
    import jax

    return bool(jax.config.jax_enable_x64)


def default_float():
    """The float dtype JAX creates by default now (float64 when x64 is on)."""
    import jax.numpy as jnp

    return jnp.float64 if x64_enabled() else jnp.float32


def resolve_dtype(dtype=None):
    """The float dtype a system computes in: ``"float32"``, ``"float64"``, or None for JAX's
    current default float. Anything else is an InputError naming what is accepted."""
    import jax.numpy as jnp

    from chaosgrad.errors import InputError

    if dtype is None:
        return default_float()
    if str(dtype) not in ("float32", "float64"):
        raise InputError(f"dtype {dtype!r} is not accepted: use 'float32' or 'float64'")
    return jnp.dtype(str(dtype))


def precision_name(dtype) -> str:
    """ "float64" or "float32": the name recorded as a system's precision."""
    import jax.numpy as jnp

    return "float64" if jnp.dtype(dtype) == jnp.float64 else "float32"


def cache_dir() -> Path:
    """Where the persistent compilation cache lives: $CHAOSGRAD_CACHE_DIR, else the user cache."""
    env = os.environ.get("CHAOSGRAD_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "chaosgrad" / "jax"


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in a user cache folder (never the repo).

    Repeated runs then load compiled programs instead of compiling again (a 37 s brax
    compile drops to a few seconds). chaosgrad calls this itself the first time one of its
    computing modules is imported (the Python API and the command line alike); set
    CHAOSGRAD_NO_CACHE=1 to leave it off, or call ``jax.config.update(
    "jax_compilation_cache_dir", None)`` after importing chaosgrad. Returns the folder, or
    None when disabled.
    """
    import jax

    if os.environ.get("CHAOSGRAD_NO_CACHE"):
        return None
    folder = Path(path) if path is not None else cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return folder


_AUTO_CACHE_DONE = False


def auto_enable_compilation_cache() -> None:
    """Turn the persistent compilation cache on once per process, unless CHAOSGRAD_NO_CACHE
    is set or the user chose a cache folder of their own (JAX's setting or
    JAX_COMPILATION_CACHE_DIR). Called when chaosgrad's computing modules are imported."""
    global _AUTO_CACHE_DONE
    if _AUTO_CACHE_DONE:
        return
    _AUTO_CACHE_DONE = True
    import jax

    if os.environ.get("CHAOSGRAD_NO_CACHE") or jax.config.jax_compilation_cache_dir:
        return
    enable_compilation_cache()


def provenance(key=None, **extra) -> dict:
    """What produced a result: the chaosgrad version, the run key's data, and ``extra``
    (e.g. the seed and the command's arguments). Recorded in every report.json."""
    from chaosgrad._version import __version__

    out = {"chaosgrad": __version__}
    if key is not None:
        import jax
        import jax.numpy as jnp

        k = jnp.asarray(key)
        if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
            k = jax.random.key_data(k)
        out["key"] = [int(x) for x in k.ravel()]
    return {**out, **extra}


def precision_info(dtype=None) -> dict:
    """Precision facts recorded with a result: dtype used, x64 mode, matmul precision, backend,
    the device kind and count (``jax.devices()[0].device_kind``, e.g. "cpu" or "NVIDIA H100
    80GB HBM3": the backend alone does not say which GPU ran it)."""
    import jax

    devices = jax.devices()
    return {
        "dtype": None if dtype is None else str(dtype),
        "x64": x64_enabled(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision or "default"),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "jax": jax.__version__,
    }
