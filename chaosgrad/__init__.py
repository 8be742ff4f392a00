"""chaosgrad: can gradients through an iterative system be trusted?

The step interface (`System`), unrolls, Jacobian spectra, Lyapunov exponents and gradient
diagnostics, all in JAX.
"""

from chaosgrad.config import enable_compilation_cache, enable_x64, precision_info
from chaosgrad.errors import InputError
from chaosgrad.system import StepOut, System
from chaosgrad.unroll import GradResult, UnrollResult, rollout, unroll, unroll_grad, unrolled_loss

__version__ = "0.1.0"

__all__ = [
    "GradResult",
    "InputError",
    "StepOut",
    "System",
    "UnrollResult",
    "enable_compilation_cache",
    "enable_x64",
    "precision_info",
    "rollout",
    "unroll",
    "unroll_grad",
    "unrolled_loss",
]
