"""Unrolled learned-optimizer training as an iterative system (`lopt_system`), with its
inner tasks and task family (`family`), hand-designed and learned optimizers, the tuned-Adam
baselines (`baselines`), loss slices along θ, and any optimizer as an optax outer optimizer
(`as_outer_optimizer`: a meta-trained optimizer that meta-trains).
"""

from chaosgrad.systems.lopt import baselines, family
from chaosgrad.systems.lopt.family import family_task
from chaosgrad.systems.lopt.learned import lstm_lopt, mlp_lopt
from chaosgrad.systems.lopt.optimizers import Optimizer, StepInfo, adam, momentum, sgd
from chaosgrad.systems.lopt.outer import OuterState, as_outer_optimizer
from chaosgrad.systems.lopt.slices import meta_loss_along_line, random_direction
from chaosgrad.systems.lopt.tasks import TASKS, Task, digits_mlp, make_task, quadratic, sine_mlp
from chaosgrad.systems.lopt.training import (
    LOSSES,
    OPTIMIZERS,
    LoptState,
    lopt_system,
    make_optimizer,
)

__all__ = [
    "LOSSES",
    "OPTIMIZERS",
    "TASKS",
    "LoptState",
    "Optimizer",
    "OuterState",
    "StepInfo",
    "Task",
    "adam",
    "as_outer_optimizer",
    "baselines",
    "digits_mlp",
    "family",
    "family_task",
    "lopt_system",
    "lstm_lopt",
    "make_optimizer",
    "make_task",
    "meta_loss_along_line",
    "mlp_lopt",
    "momentum",
    "quadratic",
    "random_direction",
    "sgd",
    "sine_mlp",
]
