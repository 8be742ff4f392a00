"""Time estimates of long runs: within 2x of the truth once a piece has run, compiling
excluded (they used to be 15-25x too long)."""

import jax
import jax.numpy as jnp

from chaosgrad.progress import _Bar, compile_seconds


class _Clock:
    """A fake clock and compile counter: the run's timeline is stated, not measured."""

    def __init__(self):
        self.now, self.compiled = 0.0, 0.0

    def run(self, work: float, compile: float = 0.0):
        self.now += work + compile
        self.compiled += compile


def test_estimate_excludes_a_slow_first_piece_and_later_compiles():
    # 10 pieces of 1 s of work each; the first also compiles for 30 s, the second compiles
    # an evaluation program for 20 s. After piece 2 the truth is 8 s left.
    c = _Clock()
    bar = _Bar(10, "run", None, announce=False, clock=lambda: c.now, compiled=lambda: c.compiled)
    assert bar.seconds_left() is None  # nothing timed yet
    c.run(1.0, compile=30.0)
    bar.update(1)
    assert bar.seconds_left() is None  # the first piece is not timed
    c.run(1.0, compile=20.0)
    bar.update(1)
    truth = 8 * 1.0
    est = bar.seconds_left()
    assert truth / 2 <= est <= truth * 2, est
    # what the estimate was before compiling was taken out: 21x too long
    assert (c.now - 31.0) / 1 * 8 > 20 * truth
    for _ in range(5):  # later pieces keep it honest
        c.run(1.0)
        bar.update(1)
        per_piece = bar.seconds_left() / (10 - bar.done)  # the truth is 1 s a piece
        assert 0.5 <= per_piece <= 2.0, per_piece


def test_announcement_names_the_estimate_without_compiling(capsys):
    c = _Clock()
    bar = _Bar(
        100, "meta-train", None, announce=True, clock=lambda: c.now, compiled=lambda: c.compiled
    )
    c.run(2.0, compile=60.0)
    bar.update(1)
    c.run(2.0, compile=40.0)  # the second piece compiles too (an evaluation)
    bar.update(1)
    err = capsys.readouterr().err
    # 98 pieces × 2 s = 3.3 minutes, not 98 × 42 s = 68.6 minutes
    assert "about 3.3 more minutes" in err, err


def test_compile_seconds_counts_jax_compiles_and_not_cached_calls():
    before = compile_seconds()
    f = jax.jit(lambda x: jnp.cos(x) * 3.0 + 1.0)
    f(jnp.arange(7.0)).block_until_ready()
    after = compile_seconds()
    assert after > before
    f(jnp.arange(7.0)).block_until_ready()  # cached: nothing compiles
    assert compile_seconds() == after
