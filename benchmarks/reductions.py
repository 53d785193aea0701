"""XLA:CPU major-axis sums: `jnp.sum` vs the same sum as a dot with ones.

Two sums in a FLAN-T5 training step reduce over the major axis of a wide
array, and XLA:CPU runs some of those far slower than the equivalent
matrix-vector product; recjax writes those two as dots:

* the relative position bias gradient: [1, heads, q, k] is broadcast over
  the batch in every layer, so its gradient sums [batch, heads, q, k] over
  the batch, once per layer (`recjax.models.t5.broadcast_over_batch`);
* Adafactor's column mean of the squared gradient of a [rows, cols] kernel
  (`recjax.train.optimizers._mean`; only for >= 16k columns, below which
  the reduction is as fast).

Prints one row per case: median ms of the reduction and of the dot (each
jitted alone, glibc malloc tuned as recjax's entry points do), their ratio,
and the largest relative difference of the results.

  .venv/bin/python benchmarks/reductions.py
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def median_ms(fn, args, reps: int) -> float:
  """Median ms of jitted fn(*args) over reps calls, after one warm-up call."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1e3 * statistics.median(times)


def main(argv=None) -> list:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reps", type=int, default=20)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--heads", type=int, default=6)
  p.add_argument("--length", type=int, default=128)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--rows", type=int, default=512)
  p.add_argument("--widths", default="1024,4096,16384,32128")
  args = p.parse_args(argv)

  from recjax import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.tune()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  hi = jax.lax.Precision.HIGHEST

  cases = []
  key = jax.random.PRNGKey(0)
  shape = (args.batch, args.heads, args.length, args.length)
  grads = [jax.random.normal(jax.random.fold_in(key, i), shape)
           for i in range(args.layers)]
  ones_b = jnp.ones((args.batch,))
  cases.append((
      f"relpos bias grad, {args.layers} layers", "x".join(map(str, shape)),
      jax.jit(lambda gs: sum(jnp.sum(g, axis=0) for g in gs)),
      jax.jit(lambda gs: sum(jnp.einsum("b,bhqk->hqk", ones_b, g,
                                        precision=hi) for g in gs)),
      (grads,)))
  for width in (int(w) for w in args.widths.split(",")):
    g = jax.random.normal(jax.random.fold_in(key, width), (args.rows, width))
    ones_r = jnp.ones((args.rows,))
    cases.append((
        "adafactor column mean", f"{args.rows}x{width}",
        jax.jit(lambda g: jnp.mean(jnp.square(g) + 1e-30, axis=0)),
        jax.jit(lambda g, o=ones_r: jnp.tensordot(
            jnp.square(g) + 1e-30, o, axes=([0], [0]), precision=hi)
                / g.shape[0]),
        (g,)))

  rows = []
  print(f"{'case':<28} {'shape':>16} {'sum ms':>8} {'dot ms':>8} "
        f"{'sum/dot':>8} {'max rel diff':>13}")
  for name, shape_s, by_sum, by_dot, fargs in cases:
    t_sum = median_ms(by_sum, fargs, args.reps)
    t_dot = median_ms(by_dot, fargs, args.reps)
    a, b = np.asarray(by_sum(*fargs)), np.asarray(by_dot(*fargs))
    diff = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    rows.append({"case": name, "shape": shape_s, "sum_ms": t_sum,
                 "dot_ms": t_dot, "max_rel_diff": diff})
    print(f"{name:<28} {shape_s:>16} {t_sum:>8.2f} {t_dot:>8.2f} "
          f"{t_sum / t_dot:>8.1f} {diff:>13.1e}", flush=True)
  return rows


if __name__ == "__main__":
  main()
