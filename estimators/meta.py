"""Meta-training: fit a system's θ with any estimator and an optax optimizer, with logs,
atomic checkpoints, exact resumption after an interruption, and a progress bar — in one
process or across the processes of a `chaosgrad.distributed` launch (process 0 writes).

The code lives in two modules, one job each: `chaosgrad.estimators.train` (the training
loop, its logs and results) and `chaosgrad.estimators.checkpoint` (the run fingerprint, the
checkpoint's save and restore, the folder's lock). Every name stays importable from here.
"""

from chaosgrad.estimators.checkpoint import (  # noqa: F401 -- re-exported
    CHECKPOINT,
    CURVES,
    LOG,
    RESULTS,
    STEP_FIELDS,
    THETA,
    OutputLock,
    _changed,
    _check_history,
    _code_fingerprint,
    _fingerprint,
    _fingerprint_mismatch,
    _layout_free,
    _load_checkpoint,
    _program_digest,
    _remove_outputs,
    _restore_checkpoint,
)
from chaosgrad.estimators.train import (  # noqa: F401 -- re-exported
    THETA_LOG_MAX,
    MetaTrainResult,
    PyTree,
    _meta_train,
    _raise_terminated,
    _Terminated,
    _write_log,
    _write_results,
    make_evaluator,
    meta_train,
    theta_record,
)
