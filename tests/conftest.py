"""Test-session settings: float64 on (oracle tests need it), the persistent compile cache.

Tests that need float32 ask for it explicitly (``dtype="float32"``).
"""

import jax

jax.config.update("jax_enable_x64", True)

from chaosgrad.config import enable_compilation_cache  # noqa: E402

enable_compilation_cache()
