"""Will it fit? Compile-ahead sizing of FLAN-T5 and 7B decoder-only LMs on TPU.

  .venv/bin/python benchmarks/aot_scale.py                       # default grid
  .venv/bin/python benchmarks/aot_scale.py --models=xxl --topologies=v5e-256 \
      --partitionings=2d --num_partitions=xxl=16 --batch_size=256
  .venv/bin/python benchmarks/aot_scale.py --full                # whole grid
  .venv/bin/python benchmarks/aot_scale.py --full --state_only   # state only
  .venv/bin/python benchmarks/aot_scale.py --full --decode_only # decode grid

Needs the libtpu wheel (`pip install '.[tpu_aot]'`); no TPU. For each
(model, slice, partitioning) the real train step (trainer.make_train_step,
T5X-default Adafactor, the model gin's remat policy, packed batches of
TASK_FEATURE_LENGTHS {'inputs': 512, 'targets': 64}) and beam-search decoding
(predict.predict_batch, 4 beams) are compiled by XLA:TPU for the slice's
devices; the table shows per-chip parameter, optimizer-state, temporary and
peak bytes against the chip's HBM, the step's FLOPs per chip and its roofline
time at the chip's bf16 peak. A configuration XLA cannot fit fails to
compile; its row says NO with the bytes XLA reports.

Compiling a whole 24- to 32-layer model is CPU-bound and slow: FLAN-T5-XL's
train step for v5e-16 took 15 minutes and 18 GB of host memory on the
2-core development machine, and XXL's for v5e-256 was killed at 21 GB. So
by default each row is sized from compiles of the same model cut to 2 and
3 layers (`aot.size_model_by_depth`: state bytes exact, compiled figures
extended linearly in depth, rows marked '~'; 2-7 minutes and 7 GB a
row); `--full_depth` compiles whole models, `--layers` picks the depths.
The default grid is the question the README answers: XXL on v5e-256, 1-D
and 2-D, plus base and XL on v5e-16. `--full` runs every model (base, XL,
XXL and the 7B decoder-only gins present in gin_configs/models) on v5e-16,
v5e-256, v4-128 and v5p-128 with 1-D and 2-D partitioning;
`--models/--topologies/--partitionings` pick a sub-grid. `--state_only`
skips compiling: the exact per-chip parameter and optimizer-state bytes of
any grid in about a minute (temporaries, peak and FLOPs need the compile).
`--no_decode` / `--decode_only` compile one of the two steps. Decoding is
always compiled whole (10-140 s a row here): the depth estimate fitted it
poorly (XXL v5e-256 2-D: 1.77 GiB from 2 + 3 layers, 2.99 GiB whole), so
'~' marks the train columns only.

The last line is one JSON object: {"results": [one entry per (model,
topology, partitioning)], "wall_seconds": ...}.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
import importlib.util  # noqa: E402,F401  (gin-config 0.5.0 needs it first)

from recjax.train import aot  # noqa: E402
from recjax.train import gin_utils  # noqa: E402

MODEL_GINS = {
    'base': 'models/flan_t5_base.gin',
    'xl': 'models/flan_t5_xl.gin',
    'xxl': 'models/flan_t5_xxl.gin',
    'llama2_7b': 'models/llama2_7b.gin',
    'qwen2_5_7b': 'models/qwen2_5_7b.gin',
}
TOPOLOGIES = ('v5e-16', 'v5e-256', 'v4-128', 'v5p-128')
# Model-parallel size per model (T5X's NUM_PARTITIONS); override per model
# with --num_partitions=xxl=8,xl=4.
NUM_PARTITIONS = {'base': 1, 'xl': 8, 'xxl': 16, 'llama2_7b': 8,
                  'qwen2_5_7b': 8}
DEFAULT_GRID = [('xxl', 'v5e-256', '1d'), ('xxl', 'v5e-256', '2d'),
                ('base', 'v5e-16', '1d'), ('xl', 'v5e-16', '2d')]


def available_models():
  return [m for m, g in MODEL_GINS.items()
          if os.path.isfile(os.path.join(gin_utils.GIN_CONFIGS, g))]


def parse_map(text: str) -> dict:
  out = {}
  for pair in filter(None, (text or '').split(',')):
    key, sep, value = pair.partition('=')
    if not sep:
      raise SystemExit(f'--num_partitions: {pair!r} is not MODEL=N')
    out[key] = int(value)
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--models', default=None,
                  help=f'comma list of {sorted(MODEL_GINS)}')
  ap.add_argument('--topologies', default=None,
                  help=f'comma list, e.g. {",".join(TOPOLOGIES)}')
  ap.add_argument('--partitionings', default=None, help='1d,2d')
  ap.add_argument('--full', action='store_true',
                  help='every available model x topology x partitioning')
  ap.add_argument('--num_partitions', default='',
                  help='MODEL=N overrides, e.g. xxl=8')
  ap.add_argument('--batch_size', type=int, default=256)
  ap.add_argument('--inputs_length', type=int, default=512)
  ap.add_argument('--targets_length', type=int, default=64)
  ap.add_argument('--remat', default=None, choices=['none', 'full', 'minimal'],
                  help="default: each model gin's")
  ap.add_argument('--num_microbatches', type=int, default=None)
  ap.add_argument('--no_decode', action='store_true',
                  help='compile the train step only')
  ap.add_argument('--decode_only', action='store_true',
                  help='compile beam-search decoding only (the train '
                  "columns keep the state's bytes)")
  ap.add_argument('--num_beams', type=int, default=4)
  ap.add_argument('--full_depth', action='store_true',
                  help='compile whole models (default: extrapolate from '
                  '--layers; a 24-layer model takes 15+ min and 18+ GB)')
  ap.add_argument('--layers', default='2,3',
                  help='the two depths compiled for the extrapolation')
  ap.add_argument('--state_only', action='store_true',
                  help='per-chip parameter and optimizer bytes only (no '
                  'compile: seconds per entry); temp/peak/FLOPs stay empty')
  args = ap.parse_args()

  if args.no_decode and args.decode_only:
    sys.exit('aot_scale: --no_decode and --decode_only leave nothing to '
             'compile')
  if not aot.libtpu_available():
    sys.exit("aot_scale: needs libtpu: pip install '.[tpu_aot]'")
  have = available_models()
  if args.full or args.models or args.topologies or args.partitionings:
    models = args.models.split(',') if args.models else have
    topologies = (args.topologies.split(',') if args.topologies
                  else list(TOPOLOGIES))
    parts = (args.partitionings.split(',') if args.partitionings
             else list(aot.PARTITIONINGS))
    grid = [(m, t, p) for m in models for t in topologies for p in parts]
  else:
    grid = DEFAULT_GRID
  unknown = sorted({m for m, _, _ in grid} - set(have))
  if unknown:
    sys.exit(f'aot_scale: unknown or absent models {unknown}; have {have}')
  nparts = {**NUM_PARTITIONS, **parse_map(args.num_partitions)}
  lengths = {'inputs': args.inputs_length, 'targets': args.targets_length}
  size = aot.size_model
  if not args.full_depth and not args.state_only:
    size = functools.partial(aot.size_model_by_depth, layers=tuple(
        int(x) for x in args.layers.split(',')))

  start = time.time()
  reports, configs = [], {}
  for model_name, topo_name, part in grid:
    if model_name not in configs:
      configs[model_name] = aot.model_from_gin([MODEL_GINS[model_name]])
    cfg = configs[model_name]
    topology = aot.parse_topology(topo_name)
    t0 = time.time()
    print(f'[aot_scale] {model_name} on {topology.accelerator_type} '
          f'({topology.name}) {part} num_partitions={nparts[model_name]}',
          file=sys.stderr, flush=True)
    try:
      r = size(
          cfg['model'], topology, num_partitions=nparts[model_name],
          partitioning_name=part, batch_size=args.batch_size,
          task_feature_lengths=lengths, remat_policy=args.remat,
          num_microbatches=args.num_microbatches,
          optimizer_fn=cfg['optimizer_fn'], train=not args.decode_only,
          decode=not args.no_decode,
          num_beams=args.num_beams, model_name=model_name,
          compile=not args.state_only)
    except ValueError as e:  # e.g. batch not divisible by the data axis
      print(f'[aot_scale]   skipped: {e}', file=sys.stderr)
      continue
    print(f'[aot_scale]   {time.time() - t0:.0f}s: {aot.table_row(r)}',
          file=sys.stderr, flush=True)
    reports.append(r)
  print(aot.format_table(reports))
  print(json.dumps({'results': [r.to_dict() for r in reports],
                    'wall_seconds': round(time.time() - start, 1)}))


if __name__ == '__main__':
  main()
