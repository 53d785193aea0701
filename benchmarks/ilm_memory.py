"""ILM phase-2 training examples/s and memory beside full fine-tuning of its LM.

ILM phase 2 (`gin_configs/runs/ilm_phase2.gin`) trains a `SlotModel`: the
frozen LM reads K soft tokens per slotted item from the item encoder
(`recjax.models.item_encoder.ItemEncoder`, sized by
`runs/ilm_item_encoder.gin`), and only the encoder's query path and adapter
train. Full fine-tuning (`runs/finetune.gin`) trains every parameter of the
same LM. This script builds both in-process from the gins (the model gin,
the run gins' optimizers, learning rate and frozen patterns) and runs the
trainer's own step (`trainer.setup_state`; `init_state` from given
parameters, as a phase-2 run starts from the loaded LM, random numbers in
place of a checkpoint; `make_train_step` with the run's frozen patterns,
jitted with the state donated) on one device, with rows (`--rows`):

* ilm: SlotModel, AdamW (ilm_phase2.gin), the LM frozen (`stop_gradient`
  in the loss, `optax.set_to_zero` in the optimizer: no gradient matmuls
  and no optimizer state for it).
* finetune: the bare LM, Adafactor (finetune.gin), everything trained.
* finetune_adamw: the bare LM with ILM's AdamW, so that the optimizer-state
  comparison is not Adafactor's factored moments against Adam's two.
* ilm_adafactor (not run by default): ILM with finetune.gin's Adafactor.

What is compared, and why it is fair: both train on the same synthetic
batch shapes and the same tokens. An ILM row is `--batch` prompts of
`--inputs` tokens holding `--slots` items as runs of K = SLOT_TOKEN_ID
tokens (the prompts of `recjax prepare --prompt=item_slots=replace`) with
`slot_items` (catalogue index + 1), and `--targets` target tokens. The
fine-tuning batch is the same prompts with each slot run replaced by K real
token ids (a title of K tokens where the item was): the LM reads exactly as
many tokens per example in both, and the ILM step does the item encoder's
work (B * S items through the Q-Former) and the slot fill on top. Rows are
unpacked and full length (no padding), decoder-only rows are the prefix-LM
converter's (`--lm decoder`). float32 activations, dropout 0 (`--dropout`).

Timing: compile + `--warmup_steps` steps excluded; `--repeats` timings of
`--steps` steps (all finished: `block_until_ready` on the state), the rows
interleaved in every repeat so that they see the same background load; the
median repeat is reported; examples/s = batch / seconds per step, and the
ratios are ILM's examples/s over each fine-tuning row's.

Memory: parameter bytes and optimizer-state bytes are summed over the leaves
of the abstract train state (`setup_state`, nothing allocated), so
`--size_only` sizes configs far larger than the machine (e.g. `--model_gin
models/flan_t5_xl.gin`); the frozen LM holds no optimizer state (optax's
`multi_transform` keeps none for `set_to_zero`). XLA's temporary buffer
size of each compiled step (activations, gradients; `memory_analysis()`) is
printed where the backend reports it.

  .venv/bin/python benchmarks/ilm_memory.py                   # tiny FLAN-T5
  .venv/bin/python benchmarks/ilm_memory.py --lm decoder
  .venv/bin/python benchmarks/ilm_memory.py --model_gin models/flan_t5_xl.gin \
      --size_only --inputs 512 --slots 32

The last stdout line is one JSON object: ilm_examples_per_s,
finetune_examples_per_s (the finetune.gin row, Adafactor), ilm_trainable_params,
ilm_optimizer_bytes, finetune_optimizer_bytes, plus finetune_adamw_*,
*_param_bytes, the ratios, the shapes and all `rows`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time
from typing import Any, Optional

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_throughput as tt  # pylint: disable=g-import-not-at-top,wrong-import-position

LM_GINS = {"t5": "models/flan_t5_tiny.gin", "decoder": "models/decoder_tiny.gin"}
ILM_GIN = "runs/ilm_phase2.gin"
FINETUNE_GIN = "runs/finetune.gin"
# row -> (model: 'ilm' = SlotModel | 'lm' = the bare LM, optimizer's gin).
ROWS = {"ilm": ("ilm", ILM_GIN), "finetune": ("lm", FINETUNE_GIN),
        "finetune_adamw": ("lm", ILM_GIN),
        "ilm_adafactor": ("ilm", FINETUNE_GIN)}
# Flag -> the LM config field it overrides (None = keep the model gin's).
LM_SIZE_FLAGS = ("vocab_size", "emb_dim", "num_heads", "head_dim", "mlp_dim",
                 "num_layers")
# Flag -> ItemEncoderConfig field (None = keep runs/ilm_item_encoder.gin's).
ENCODER_FLAGS = {"query_tokens": "num_query_tokens",
                 "encoder_hidden": "hidden_dim", "encoder_layers": "num_layers",
                 "encoder_heads": "num_heads", "encoder_mlp": "mlp_dim",
                 "cf_dim": "cf_dim"}


def _log(msg: str) -> None:
  print(f"[ilm_memory] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------- the gins
@dataclasses.dataclass
class RunSetup:
  """What the gins give: the two models, optimizers, ILM's frozen patterns."""
  lm_cfg: Any
  encoder_cfg: Any
  ilm_model: Any
  lm_model: Any
  tokens_per_slot: int
  frozen_patterns: tuple
  optimizers: dict       # run gin -> (optimizer name, GradientTransformation)
  architecture: str


def _lm_bindings(args, config_class: str) -> list:
  bindings = [f"ACTIVATION_DTYPE = '{args.dtype}'",
              f"DROPOUT_RATE = {args.dropout}"]
  for flag in LM_SIZE_FLAGS:
    value = getattr(args, flag)
    if value is None:
      continue
    if flag == "num_layers" and config_class == "T5Config":
      bindings += [f"T5Config.num_encoder_layers = {value}",
                   f"T5Config.num_decoder_layers = {value}"]
    elif flag == "vocab_size":
      bindings.append(f"VOCAB_SIZE = {value}")
    else:
      bindings.append(f"{config_class}.{flag} = {value}")
  return bindings


def _parse(model_gin: str, run_gin: str, bindings: list) -> None:
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.train import gin_utils  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  gin_utils.parse_gin_flags([model_gin, run_gin], bindings,
                            finalize_config=False)


def _run_optimizer(lr_schedule):
  """(name, the run gin's `train.optimizer` at the gin's learning rate)."""
  import gin  # pylint: disable=g-import-not-at-top
  ref = gin.query_parameter("train.optimizer")
  # The gin-wrapped function: the run's other bindings of it apply too.
  return ref.selector.split(".")[-1], ref.scoped_configurable_fn(
      learning_rate=lr_schedule)


def load_setup(args) -> RunSetup:
  """Builds the models and optimizers under the model gin + the run gins.

  The ILM gin gives the LM (its `LM_MODEL` class: z-loss and the rest), the
  item encoder's sizes, K, AdamW and the frozen patterns; finetune.gin gives
  Adafactor. Nothing reads data: the item encoder's catalogue is
  `--num_items` rows (the gins' `models.item_encoder` factory sizes it
  from a prepared directory instead).
  """
  import gin  # pylint: disable=g-import-not-at-top
  from recjax.models import item_encoder as item_encoder_lib  # pylint: disable=g-import-not-at-top
  from recjax.train import model_api, optimizers, slot_model  # pylint: disable=g-import-not-at-top,g-multiple-import
  model_gin = args.model_gin or LM_GINS[args.lm]
  _parse(model_gin, FINETUNE_GIN, [])  # which LM class, for the bindings
  lm_class = gin.query_parameter("%LM_MODEL").scoped_configurable_fn
  decoder = gin.query_parameter("%LM_MODEL").configurable.wrapped is (
      model_api.DecoderOnlyModel)
  config_class = "DecoderOnlyConfig" if decoder else "T5Config"
  bindings = _lm_bindings(args, config_class)
  bindings += [f"ItemEncoderConfig.{field} = {getattr(args, flag)}"
               for flag, field in ENCODER_FLAGS.items()
               if getattr(args, flag) is not None]
  opts = {}
  try:
    _parse(model_gin, FINETUNE_GIN, bindings)
    opts[FINETUNE_GIN] = _run_optimizer(optimizers.constant())
    _parse(model_gin, ILM_GIN, bindings)
    opts[ILM_GIN] = _run_optimizer(optimizers.constant())
    frozen = tuple(gin.query_parameter("train.frozen_patterns"))
    # The gin's LM_MODEL (module, z-loss, ...), one for each model.
    lm_model, ilm_lm = lm_class(), lm_class()
    lm_cfg = lm_model.module.config
    # LM_EMB_DIM follows the LM, as a phase-2 run must set it.
    encoder_cfg = dataclasses.replace(
        item_encoder_lib.ItemEncoderConfig(), num_items=args.num_items,
        lm_emb_dim=lm_cfg.emb_dim)
    k = gin.query_parameter("models.SlotModel.tokens_per_slot")
    if not isinstance(k, int):  # a macro (%NUM_QUERY_TOKENS)
      k = encoder_cfg.num_query_tokens
  finally:
    gin.clear_config()
  # Outside gin: its SlotModel bindings would build the gin's own
  # `models.item_encoder()`, which sizes itself from a prepared directory.
  ilm_model = slot_model.SlotModel(
      lm=ilm_lm, slot_module=item_encoder_lib.ItemEncoder(encoder_cfg),
      slot_method="soft_tokens", tokens_per_slot=k,
      params_key="item_encoder", slot_checkpoint_path=None)
  return RunSetup(lm_cfg, encoder_cfg, ilm_model, lm_model, k, frozen, opts,
                  lm_model.architecture)


# ----------------------------------------------------------------- batches
def slot_starts(inputs_length: int, num_slots: int, k: int) -> np.ndarray:
  """Start of each item's run of k slot tokens, spread over the prompt with
  text between them (as a history `item, item, ...` with words around)."""
  free = inputs_length - num_slots * k
  if free < 0:
    raise ValueError(f"--slots {num_slots} x K {k} slot tokens do not fit in "
                     f"--inputs {inputs_length}")
  gap = free // (num_slots + 1)
  return np.array([gap * (s + 1) + s * k for s in range(num_slots)], np.int64)


def make_batches(architecture: str, vocab: int, b: int, li: int, lt: int,
                 num_slots: int, k: int, num_items: int,
                 seed: int) -> tuple[dict, dict]:
  """(ILM batch with slot runs + slot_items, fine-tuning batch of the same
  prompts with K real tokens in each run), as the feature converters make
  them (unpacked): EncDec for 't5', PrefixLM for 'decoder_only'."""
  from recjax import slots  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  inputs = rng.integers(3, vocab, (b, li), dtype=np.int32)
  targets = rng.integers(3, vocab, (b, lt), dtype=np.int32)
  positions = (slot_starts(li, num_slots, k)[:, None] + np.arange(k)).ravel()
  slotted = inputs.copy()
  slotted[:, positions] = slots.SLOT_TOKEN_ID
  items = np.stack([rng.choice(num_items, num_slots, replace=False) + 1
                    for _ in range(b)]).astype(np.int32)

  def converted(prompt):
    if architecture == "encoder_decoder":
      dec_in = np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1)
      return {"encoder_input_tokens": prompt, "decoder_input_tokens": dec_in,
              "decoder_target_tokens": targets,
              "decoder_loss_weights": np.ones((b, lt), np.int32)}
    seq = np.concatenate([prompt, targets], 1)
    shifted = np.concatenate([np.zeros((b, 1), np.int32), seq[:, :-1]], 1)
    return {"decoder_input_tokens": shifted, "decoder_target_tokens": seq,
            "decoder_loss_weights": np.broadcast_to(
                np.arange(li + lt) >= li, seq.shape).astype(np.int32),
            "decoder_causal_attention": np.broadcast_to(
                np.arange(li + lt) <= li, seq.shape).astype(np.int32)}

  ilm = dict(converted(slotted), **{slots.SLOT_FEATURE: items})
  return ilm, converted(inputs)


# ----------------------------------------------------------------- one row
def tree_bytes(tree) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize
                 for x in jax.tree_util.tree_leaves(tree)))


def memory_of(abstract_state, frozen_patterns) -> dict:
  """Parameter / trainable / optimizer-state sizes of an abstract TrainState."""
  import jax  # pylint: disable=g-import-not-at-top
  from recjax.train import optimizers  # pylint: disable=g-import-not-at-top
  params = abstract_state.params
  labels = optimizers.frozen_labels(params, frozen_patterns)
  trainable = [p for p, l in zip(jax.tree_util.tree_leaves(params),
                                 jax.tree_util.tree_leaves(labels))
               if l == optimizers.TRAINABLE]
  return {"params": int(sum(np.prod(p.shape, dtype=np.int64)
                            for p in jax.tree_util.tree_leaves(params))),
          "param_bytes": tree_bytes(params),
          "trainable_params": int(sum(np.prod(p.shape, dtype=np.int64)
                                      for p in trainable)),
          "trainable_param_bytes": tree_bytes(trainable),
          "optimizer_bytes": tree_bytes(abstract_state.opt_state)}


def random_params(abstract_params, seed: int):
  """Host arrays of the tree's shapes: kernels and embeddings ~ N(0,
  1/rows), norm scales 1, biases 0 (a finite loss, as a checkpoint's)."""
  import jax  # pylint: disable=g-import-not-at-top
  from recjax.train import optimizers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)

  def one(path, leaf):
    name = optimizers.param_path(path)
    if len(leaf.shape) >= 2:
      x = rng.standard_normal(leaf.shape) / np.sqrt(leaf.shape[0])
    elif name.endswith("scale"):
      x = np.ones(leaf.shape)
    else:
      x = np.zeros(leaf.shape)
    return x.astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(one, abstract_params)


class StepRunner:
  """The trainer's jitted, donated train step of one row on one device."""

  def __init__(self, model, batch: dict, tx, frozen_patterns: tuple,
               seed: int, allocate: bool = True):
    import jax  # pylint: disable=g-import-not-at-top
    from recjax.train import optimizers, partitioning, trainer  # pylint: disable=g-import-not-at-top,g-multiple-import
    self._jax = jax
    part = partitioning.Partitioner(mesh_shape=(1, 1),
                                    devices=jax.devices()[:1])
    shapes = {k: (1,) + v.shape[1:] for k, v in batch.items()}
    rng = jax.random.PRNGKey(seed)
    setup = trainer.setup_state(
        model, part, lambda params: optimizers.build_optimizer(
            tx, frozen_patterns=frozen_patterns, params=params), shapes, rng)
    self.memory = memory_of(setup.abstract_state, frozen_patterns)
    self.temp_bytes = None
    if not allocate:
      return
    # As train() builds a phase-2 state from the loaded LM (and a fine-tuning
    # one from its checkpoint): init_state(params=...), random numbers in
    # place of a checkpoint. (Flax's initialisers would cost one more XLA
    # compile per row: 5-10 s on 2 cores.)
    self.state = trainer.init_state(
        model, setup, part, shapes, rng,
        params=random_params(setup.abstract_state.params, seed))
    batch_shardings = {k: part.data_sharding() for k in batch}
    step = part.partition(
        trainer.make_train_step(model, setup.tx, None, part.data_sharding(),
                                frozen_patterns=frozen_patterns),
        in_shardings=(setup.state_shardings, batch_shardings,
                      part.replicated()),
        out_shardings=(setup.state_shardings, part.replicated()),
        donate_argnums=(0,))
    self.batch = part.shard_batch(batch)
    self.rng = jax.random.PRNGKey(seed + 1)
    self.step = step.lower(self.state, self.batch, self.rng).compile()
    try:
      self.temp_bytes = int(self.step.memory_analysis().temp_size_in_bytes)
    except (AttributeError, TypeError, NotImplementedError):
      pass

  def run(self, n: int) -> tuple[float, float]:
    """(seconds, last loss) for n steps, all finished."""
    t0 = time.perf_counter()
    metrics = None
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch, self.rng)
    self._jax.block_until_ready(self.state)
    seconds = time.perf_counter() - t0
    return seconds, float(self._jax.device_get(metrics["loss"]))


# ----------------------------------------------------------------- main
def parse_args(argv) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--lm", choices=("t5", "decoder"), default="t5",
                 help=f"the LM's model gin: {LM_GINS}")
  p.add_argument("--model_gin", default=None,
                 help="another model gin (e.g. models/flan_t5_small.gin, "
                 "llama3_2_1b.gin); overrides --lm")
  for flag in LM_SIZE_FLAGS:
    p.add_argument(f"--{flag}", type=int, default=None,
                   help="LM size override (default: the model gin's)")
  for flag, field in ENCODER_FLAGS.items():
    p.add_argument(f"--{flag}", type=int, default=None,
                   help=f"ItemEncoderConfig.{field} (default: "
                   "runs/ilm_item_encoder.gin's)")
  p.add_argument("--num_items", type=int, default=1000,
                 help="catalogue size (rows of the encoder's CF table)")
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--inputs", type=int, default=128, help="prompt tokens")
  p.add_argument("--targets", type=int, default=16)
  p.add_argument("--slots", type=int, default=10,
                 help="slotted items per prompt (K slot tokens each)")
  p.add_argument("--rows", default="ilm,finetune,finetune_adamw",
                 help=f"comma-separated, of {list(ROWS)}")
  p.add_argument("--steps", type=int, default=8, help="steps per timed repeat")
  p.add_argument("--repeats", type=int, default=9,
                 help="interleaved repeats; the median is reported")
  p.add_argument("--warmup_steps", type=int, default=3,
                 help="untimed steps after compiling")
  p.add_argument("--size_only", action="store_true",
                 help="sizes from the abstract state only: no arrays, no "
                 "timing (any config size)")
  p.add_argument("--dropout", type=float, default=0.0)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--malloc_tuning", choices=("on", "off"), default="on",
                 help="recjax.host_malloc.tune() first, as recjax's entry "
                 "points do")
  args = p.parse_args(argv)
  unknown = [r for r in args.rows.split(",") if r.strip() not in ROWS]
  if unknown:
    p.error(f"--rows: unknown {unknown}; expected of {list(ROWS)}")
  return args


def _fmt(x, spec: str) -> str:
  return "n/a" if x is None else format(x, spec)


def _mib(n: Optional[int]) -> str:
  return "n/a" if n is None else f"{n / 2**20:,.2f}"


def report(rows: list, args, run: RunSetup) -> dict:
  by = {r["row"]: r for r in rows}
  ilm = by.get("ilm")
  for r in rows:
    base = None if ilm is None else ilm["examples_per_s"]
    r["ilm_speedup"] = (None if base is None or r["examples_per_s"] is None
                        else base / r["examples_per_s"])
    # The same ratio repeat by repeat (both timed within seconds of each
    # other), median: steadier than the ratio of medians under drifting load.
    r["ilm_speedup_paired"] = (
        None if ilm is None or not r["repeats_s_per_step"] else
        statistics.median(t / i for t, i in zip(r["repeats_s_per_step"],
                                                ilm["repeats_s_per_step"])))
  lm = run.lm_cfg
  print(f"# ILM phase 2 vs full fine-tuning: {args.model_gin or LM_GINS[args.lm]}"
        f" ({run.architecture}, emb {lm.emb_dim}, vocab {lm.vocab_size}); "
        f"item encoder hidden {run.encoder_cfg.hidden_dim} x "
        f"{run.encoder_cfg.num_layers} layers, K {run.tokens_per_slot}, "
        f"{args.num_items} items; batch {args.batch} x (inputs {args.inputs} "
        f"incl. {args.slots} x {run.tokens_per_slot} slot tokens + targets "
        f"{args.targets}); {args.dtype}; "
        + ("sizes only" if args.size_only else
           f"median of {args.repeats} x {args.steps} steps") +
        f"; {tt.cpu_model()}")
  head = (f"{'row':<15} {'optimizer (gin)':<28} {'trainable':>14} "
          f"{'param MiB':>10} {'opt state MiB':>14} {'XLA temp MiB':>13} "
          f"{'s/step':>7} {'examples/s':>11} {'ILM x':>6} {'paired':>7}")
  print(head)
  print("-" * len(head))
  for r in rows:
    print(f"{r['row']:<15} {r['optimizer'] + ' (' + r['optimizer_gin'] + ')':<28} "
          f"{r['trainable_params']:>14,} {_mib(r['param_bytes']):>10} "
          f"{_mib(r['optimizer_bytes']):>14} {_mib(r['xla_temp_bytes']):>13} "
          f"{_fmt(r['s_per_step'], '.3f'):>7} "
          f"{_fmt(r['examples_per_s'], '.1f'):>11} "
          f"{_fmt(r['ilm_speedup'], '.2f'):>6} "
          f"{_fmt(r['ilm_speedup_paired'], '.2f'):>7}")
  print("ILM x = the ilm row's examples/s / this row's; paired = the median "
        "over repeats of this row's s/step / ilm's in the same repeat. "
        "trainable = parameters the optimizer updates (ILM: the item "
        "encoder's query path, CF table and adapter; the LM is frozen by "
        "ilm_phase2.gin, and phase 2 builds no text branch).")
  get = lambda row, key: by[row][key] if row in by else None
  result = {
      "ilm_examples_per_s": get("ilm", "examples_per_s"),
      "finetune_examples_per_s": get("finetune", "examples_per_s"),
      "ilm_trainable_params": get("ilm", "trainable_params"),
      "ilm_optimizer_bytes": get("ilm", "optimizer_bytes"),
      "finetune_optimizer_bytes": get("finetune", "optimizer_bytes"),
      "finetune_adamw_examples_per_s": get("finetune_adamw", "examples_per_s"),
      "finetune_adamw_optimizer_bytes": get("finetune_adamw",
                                            "optimizer_bytes"),
      "ilm_param_bytes": get("ilm", "param_bytes"),
      "finetune_param_bytes": get("finetune", "param_bytes"),
      "finetune_trainable_params": get("finetune", "trainable_params"),
      "ilm_vs_finetune": get("finetune", "ilm_speedup"),
      "ilm_vs_finetune_adamw": get("finetune_adamw", "ilm_speedup"),
      "ilm_vs_finetune_paired": get("finetune", "ilm_speedup_paired"),
      "lm": args.model_gin or LM_GINS[args.lm], "batch": args.batch,
      "inputs_length": args.inputs, "targets_length": args.targets,
      "slots": args.slots, "tokens_per_slot": run.tokens_per_slot,
      "num_items": args.num_items, "rows": rows}
  print(json.dumps(result), flush=True)
  return result


def main(argv=None) -> dict:
  args = parse_args(argv)
  if args.malloc_tuning == "on":
    from recjax import host_malloc  # pylint: disable=g-import-not-at-top
    host_malloc.tune()  # before JAX starts its threads, as recjax.main
  run = load_setup(args)
  ilm_batch, ft_batch = make_batches(
      run.architecture, run.lm_cfg.vocab_size, args.batch, args.inputs,
      args.targets, args.slots, run.tokens_per_slot, args.num_items, args.seed)
  names = [r.strip() for r in args.rows.split(",") if r.strip()]
  runners = {}
  for name in names:
    kind, gin_file = ROWS[name]
    opt_name, tx = run.optimizers[gin_file]
    t0 = time.perf_counter()
    runners[name] = StepRunner(
        run.ilm_model if kind == "ilm" else run.lm_model,
        ilm_batch if kind == "ilm" else ft_batch, tx,
        run.frozen_patterns if kind == "ilm" else (), args.seed,
        allocate=not args.size_only)
    runners[name].optimizer = (opt_name, pathlib.Path(gin_file).name)
    if not args.size_only:
      runners[name].run(max(args.warmup_steps, 1))
    _log(f"{name}: ready in {time.perf_counter() - t0:.1f}s "
         f"({runners[name].memory})")
  times = {name: [] for name in names}
  losses = {name: None for name in names}
  if not args.size_only:
    for r in range(args.repeats):
      for name in names:  # interleaved: each repeat sees the same load
        seconds, losses[name] = runners[name].run(args.steps)
        times[name].append(seconds / args.steps)
      _log(f"repeat {r + 1}/{args.repeats}: " + ", ".join(
          f"{n} {times[n][-1]:.3f} s/step" for n in names))
  rows = []
  for name in names:
    runner = runners[name]
    s = statistics.median(times[name]) if times[name] else None
    rows.append(dict(
        row=name, optimizer=runner.optimizer[0],
        optimizer_gin=runner.optimizer[1], **runner.memory,
        xla_temp_bytes=runner.temp_bytes, s_per_step=s,
        examples_per_s=None if s is None else args.batch / s,
        repeats_s_per_step=times[name], last_loss=losses[name]))
  return report(rows, args, run)


if __name__ == "__main__":
  main()
