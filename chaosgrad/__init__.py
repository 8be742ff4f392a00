"""chaosgrad: can gradients through an iterative system be trusted?

The step interface (`System`), unrolls, Jacobian spectra, Lyapunov exponents and gradient
diagnostics, all in JAX.
"""

from chaosgrad._version import __version__
from chaosgrad.config import enable_compilation_cache, enable_x64, precision_info
from chaosgrad.errors import InputError
from chaosgrad.gradients import GrowthResult, gradient_growth
from chaosgrad.jacobian import step_jacobian, step_jacobian_operator
from chaosgrad.spectra import (
    LyapunovResult,
    finite_time_lyapunov,
    jacobian_eigenvalues,
    jacobian_products,
    lyapunov_spectrum,
    product_singular_values,
)
from chaosgrad.system import StepOut, System
from chaosgrad.unroll import GradResult, UnrollResult, rollout, unroll, unroll_grad, unrolled_loss

__all__ = [
    "__version__",
    "GradResult",
    "GrowthResult",
    "InputError",
    "LyapunovResult",
    "StepOut",
    "System",
    "UnrollResult",
    "enable_compilation_cache",
    "enable_x64",
    "finite_time_lyapunov",
    "gradient_growth",
    "jacobian_eigenvalues",
    "jacobian_products",
    "lyapunov_spectrum",
    "precision_info",
    "product_singular_values",
    "rollout",
    "step_jacobian",
    "step_jacobian_operator",
    "unroll",
    "unroll_grad",
    "unrolled_loss",
]
