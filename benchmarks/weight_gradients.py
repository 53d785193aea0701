"""The step's weight-gradient matmuls: Eigen's X^T dY vs transpose + YNNPACK.

XLA:CPU gives a dot to YNNPACK only when its left operand contracts its minor
axis; the weight gradients of a dense layer, dW = X^T dY (contracting the
token axis, X's major one), go to Eigen instead. This times, for every
weight matmul of the FLAN-T5 `--config` step (`train_throughput.py`'s
shapes and batch), dW in both forms, each jitted alone:

* `eigen`: `lax.dot_general` contracting axis 0 of both, as autodiff makes it;
* `transpose+ynn`: X transposed into a new buffer (an optimization barrier
  stops XLA folding it back into the dot), then X^T @ dY, which YNNPACK takes;
  the copy's time is included.

Prints per shape the count in one step, median ms of each form (the two
timed in turn, `--reps` times), their ratio, and the largest relative
difference; then the totals per step. The
difference is the most a step could gain by choosing the kernel (recjax does
not: a barrier in the model's backward pass would cost fusion on TPU/GPU).

  .venv/bin/python benchmarks/weight_gradients.py
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import sys
import time

HERE = pathlib.Path(__file__).resolve()
sys.path[:0] = [str(HERE.parents[1]), str(HERE.parent)]


def interleaved_median_ms(fns, args, reps: int) -> list[float]:
  """Median ms per fn of fn(*args), the fns timed in turn within each rep,
  so that the machine's drift (20-30% within minutes here) hits all alike."""
  import jax  # pylint: disable=g-import-not-at-top
  for fn in fns:
    jax.block_until_ready(fn(*args))
  times = [[] for _ in fns]
  for _ in range(reps):
    for fn, out in zip(fns, times):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(*args))
      out.append(time.perf_counter() - t0)
  return [1e3 * statistics.median(t) for t in times]


def weight_gradient_shapes(config: str) -> collections.Counter:
  """(tokens, in, out) -> count of weight matmuls in one step of `config`."""
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  cfg = tt.load_config(config, 0.0, "float32")
  b, li, lt = tt.DEFAULT_SHAPES[config]
  return collections.Counter(
      (m, k, n) for g, m, k, n in tt.forward_matmuls(cfg, b, li, lt)
      if g == 1)


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="small", choices=("tiny", "small"))
  p.add_argument("--reps", type=int, default=20)
  args = p.parse_args(argv)

  from recjax import host_malloc  # pylint: disable=g-import-not-at-top
  host_malloc.tune()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  eigen = jax.jit(
      lambda x, dy: lax.dot_general(x, dy, (((0,), (0,)), ((), ()))))
  ynn = jax.jit(lambda x, dy: lax.optimization_barrier(x.T) @ dy)

  shapes = weight_gradient_shapes(args.config)
  print(f"{'tokens x in x out':>20} {'count':>5} {'eigen ms':>9} "
        f"{'transpose+ynn ms':>17} {'ratio':>6} {'max rel diff':>12}")
  rows, total = [], collections.Counter()
  rng = np.random.default_rng(0)
  for (m, k, n), count in sorted(shapes.items()):
    x = jax.numpy.asarray(rng.standard_normal((m, k), dtype=np.float32))
    dy = jax.numpy.asarray(rng.standard_normal((m, n), dtype=np.float32))
    a = np.asarray(eigen(x, dy))
    b = np.asarray(ynn(x, dy))
    diff = float(np.max(np.abs(a - b)) / np.max(np.abs(a)))
    ms_e, ms_y = interleaved_median_ms((eigen, ynn), (x, dy), args.reps)
    total["eigen"] += count * ms_e
    total["ynn"] += count * ms_y
    rows.append({"m": m, "k": k, "n": n, "count": count, "eigen_ms": ms_e,
                 "transpose_ynn_ms": ms_y, "max_rel_diff": diff})
    print(f"{f'{m} x {k} x {n}':>20} {count:>5} {ms_e:>9.2f} {ms_y:>17.2f} "
          f"{ms_y / ms_e:>6.2f} {diff:>12.1e}")
  print(f"per step: eigen {total['eigen']:.1f} ms, transpose+ynn "
        f"{total['ynn']:.1f} ms ({total['ynn'] - total['eigen']:+.1f} ms)")
  result = {"config": args.config, "eigen_ms_per_step": total["eigen"],
            "transpose_ynn_ms_per_step": total["ynn"], "rows": rows}
  print(json.dumps(result))
  return result


if __name__ == "__main__":
  main()
