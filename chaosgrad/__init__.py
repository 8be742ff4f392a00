"""chaosgrad: can gradients through an iterative system be trusted?

The step interface (`System`), unrolls, Jacobian spectra, Lyapunov exponents and gradient
diagnostics, all in JAX; `diagnose`, `compare` and `meta_train` for the three questions a user
asks. Names load on first use, so ``import chaosgrad`` costs little more than JAX itself.
"""

from __future__ import annotations

import importlib

from chaosgrad._version import __version__
from chaosgrad.errors import InputError

# name -> "module:attribute" (or "module" for a module), imported on first access (PEP 562).
# `compare` and `meta_train` live above the library (the app and the estimators layers):
# they are looked up by name here, never imported by library code.
_LAZY = {
    "enable_compilation_cache": "chaosgrad.config:enable_compilation_cache",
    "enable_x64": "chaosgrad.config:enable_x64",
    "precision_info": "chaosgrad.config:precision_info",
    "GrowthResult": "chaosgrad.gradients:GrowthResult",
    "gradient_growth": "chaosgrad.gradients:gradient_growth",
    "step_jacobian": "chaosgrad.jacobian:step_jacobian",
    "step_jacobian_operator": "chaosgrad.jacobian:step_jacobian_operator",
    "LyapunovResult": "chaosgrad.spectra:LyapunovResult",
    "finite_time_lyapunov": "chaosgrad.spectra:finite_time_lyapunov",
    "jacobian_eigenvalues": "chaosgrad.spectra:jacobian_eigenvalues",
    "jacobian_products": "chaosgrad.spectra:jacobian_products",
    "lyapunov_spectrum": "chaosgrad.spectra:lyapunov_spectrum",
    "lyapunov_runs": "chaosgrad.spectra:lyapunov_runs",
    "product_singular_values": "chaosgrad.spectra:product_singular_values",
    "StepOut": "chaosgrad.system:StepOut",
    "System": "chaosgrad.system:System",
    "GradResult": "chaosgrad.unroll:GradResult",
    "UnrollResult": "chaosgrad.unroll:UnrollResult",
    "pure_unroll": "chaosgrad.unroll:pure_unroll",
    "rollout": "chaosgrad.unroll:rollout",  # deprecated: pure_unroll takes the run key
    "unroll": "chaosgrad.unroll:unroll",
    "unroll_grad": "chaosgrad.unroll:unroll_grad",
    "unrolled_loss": "chaosgrad.unroll:unrolled_loss",
    # the user's three entry points; `chaosgrad.diagnose` is also the module (callable)
    "diagnose": "chaosgrad.diagnose",
    "Diagnosis": "chaosgrad.diagnose:Diagnosis",
    "compare": "chaosgrad.app.api:compare",
    "Comparison": "chaosgrad.app.api:Comparison",
    "meta_train": "chaosgrad.app.api:meta_train",
    "systems": "chaosgrad.systems",
    "estimators": "chaosgrad.estimators",
}

__all__ = ["__version__", "InputError", *sorted(_LAZY)]


def __getattr__(name: str):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'chaosgrad' has no attribute {name!r}")
    module, _, attr = target.partition(":")
    value = importlib.import_module(module)
    if attr:
        value = getattr(value, attr)
    globals()[name] = value  # later look-ups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
