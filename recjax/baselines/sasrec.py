"""SASRec baseline with RecBole's SASRec configuration.

Training (`training='prefix'`, RecBole's data augmentation): every position
i >= 1 of each user's train sequence is one example, history = the previous
(at most `max_len`) items, target = item i; loss `ce` over all items. The
SASRec paper's variant (`training='sequence'`, usually with `loss='bce'`):
one example per user, a target at every position. A faster approximation of
the prefix mode (`training='window'`): each user's first `max_len` items form
one window with a target at every position (exactly the first `max_len`
prefix examples), and later targets are grouped `window_stride` at a time into
windows of the `max_len` items before the group's last target, so every
target keeps at least `max_len - window_stride + 1` items of history; batches
hold about `batch_size` targets. Adam lr 1e-3, batch 256,
at most 30 epochs, early stopping on validation NDCG@10 (patience 5, RecBole
semantics), best epoch tested. The validation input is the train sequence, the
test input adds the validation item (the model is not retrained on it).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recjax.baselines import common
from recjax.baselines.bpr import NegativeSampler
from recjax.models.sasrec import SASRec, SASRecConfig

DEFAULTS = dict(max_len=50, n_layers=2, n_heads=2, hidden=64, inner=256,
                hidden_dropout=0.5, attn_dropout=0.5, learning_rate=1e-3,
                batch_size=256, epochs=30, patience=5, loss="ce",
                training="prefix", window_stride=5, mask_history=True,
                ties="pessimistic", eval_batch_size=1024)


def left_aligned(histories: list[np.ndarray], max_len: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Tokens [N, max_len] (item + 1, 0 = pad) of each history's last max_len items."""
  out = np.zeros((len(histories), max_len), np.int32)
  lengths = np.zeros(len(histories), np.int32)
  for r, h in enumerate(histories):
    h = h[-max_len:]
    out[r, :len(h)] = h + 1
    lengths[r] = len(h)
  return out, lengths


@dataclasses.dataclass
class Examples:
  """Training rows: tokens [N, L], positions/targets [N, P] (-1 = no target)."""
  tokens: np.ndarray
  positions: np.ndarray
  targets: np.ndarray
  users: np.ndarray
  rows_per_batch: int

  def __len__(self):
    return len(self.tokens)


def prefix_examples(seqs: list[np.ndarray], max_len: int, batch_size: int
                    ) -> list[Examples]:
  """RecBole's augmentation: one row per position i >= 1, history = previous items."""
  hist, targets, users = [], [], []
  for u, s in enumerate(seqs):
    for i in range(1, len(s)):
      hist.append(s[max(0, i - max_len):i])
      targets.append(s[i])
      users.append(u)
  tokens, lengths = left_aligned(hist, max_len)
  return [Examples(tokens, (lengths - 1)[:, None].astype(np.int32),
                   np.asarray(targets, np.int32)[:, None],
                   np.asarray(users, np.int64), batch_size)]


def sequence_examples(seqs: list[np.ndarray], max_len: int, batch_size: int
                      ) -> list[Examples]:
  """The paper's layout: input s[:-1], target s[1:] at every position (-1 = none)."""
  keep = [u for u, s in enumerate(seqs) if len(s) >= 2]
  tokens, _ = left_aligned([seqs[u][:-1] for u in keep], max_len)
  targets = np.full(tokens.shape, -1, np.int32)
  for r, u in enumerate(keep):
    t = seqs[u][1:][-max_len:]
    targets[r, :len(t)] = t
  positions = np.broadcast_to(np.arange(max_len, dtype=np.int32), tokens.shape)
  return [Examples(tokens, np.ascontiguousarray(positions), targets,
                   np.asarray(keep, np.int64), batch_size)]


def window_examples(seqs: list[np.ndarray], max_len: int, stride: int,
                    batch_size: int) -> list[Examples]:
  """`training='window'` rows (see the module docstring); two row shapes."""
  first_tok, first_tgt, first_u = [], [], []
  tok, pos, tgt, users = [], [], [], []
  for u, s in enumerate(seqs):
    n = len(s)
    if n < 2:
      continue
    m = min(n, max_len)
    t = np.full(max_len, -1, np.int32)
    nt = min(n - 1, max_len)  # targets s[1..nt] at positions 0..nt-1
    t[:nt] = s[1:nt + 1]
    first_tok.append(s[:m])
    first_tgt.append(t)
    first_u.append(u)
    for a in range(max_len + 1, n, stride):
      b = min(a + stride - 1, n - 1)
      tok.append(s[b - max_len:b])
      p = np.zeros(stride, np.int32)
      g = np.full(stride, -1, np.int32)
      for k, i in enumerate(range(a, b + 1)):
        p[k] = max_len - 1 - (b - i)
        g[k] = s[i]
      pos.append(p)
      tgt.append(g)
      users.append(u)
  out = []
  if first_tok:
    ft, _ = left_aligned(first_tok, max_len)
    out.append(Examples(
        ft, np.broadcast_to(np.arange(max_len, dtype=np.int32), ft.shape).copy(),
        np.stack(first_tgt), np.asarray(first_u, np.int64),
        max(1, batch_size // max_len)))
  if tok:
    wt, _ = left_aligned(tok, max_len)
    out.append(Examples(wt, np.stack(pos), np.stack(tgt),
                        np.asarray(users, np.int64), max(1, batch_size // stride)))
  return out


def epoch_batches(groups: list[Examples], rng: np.random.Generator):
  """Shuffled (group, row indices) batches covering every row once."""
  batches = []
  for g, ex in enumerate(groups):
    perm = rng.permutation(len(ex))
    for s in range(0, len(ex), ex.rows_per_batch):
      batches.append((g, perm[s:s + ex.rows_per_batch]))
  order = rng.permutation(len(batches))
  return [batches[k] for k in order]


@functools.lru_cache(maxsize=8)
def _compiled(cfg: SASRecConfig, learning_rate: float, loss_type: str):
  """Jitted train step and encoder, cached so repeated runs compile once."""
  model = SASRec(cfg)
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, rng_key, seq, tgt, pos, neg):
    def loss_fn(prm):
      return model.apply({"params": prm}, seq, tgt, positions=pos,
                         negatives=neg if loss_type == "bce" else None,
                         loss_type=loss_type, deterministic=False,
                         method=SASRec.loss, rngs={"dropout": rng_key})
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def encode(params, seq, lens):
    return model.apply({"params": params}, seq, lens, method=SASRec.encode)

  return model, tx, step, encode


def train_sasrec(data, *, seed: int = 0, epochs: int | None = None,
                 log: Callable[[str], None] | None = print,
                 **hparams) -> common.BaselineResult:
  unknown = set(hparams) - set(DEFAULTS)
  if unknown:
    raise TypeError(f"unknown SASRec hyper-parameters {sorted(unknown)}")
  hp = {**DEFAULTS, **hparams}
  if epochs is not None:
    hp["epochs"] = epochs
  if hp["loss"] not in ("ce", "bce"):
    raise ValueError(f"loss {hp['loss']!r}; expected 'ce' or 'bce'")
  timer = common.Timer()
  cfg = SASRecConfig(num_items=data.num_items, max_len=hp["max_len"],
                     n_layers=hp["n_layers"], n_heads=hp["n_heads"],
                     hidden=hp["hidden"], inner=hp["inner"],
                     hidden_dropout=hp["hidden_dropout"],
                     attn_dropout=hp["attn_dropout"])
  model = SASRec(cfg)
  seqs = common.train_sequences(data)
  if hp["training"] == "prefix":
    groups = prefix_examples(seqs, cfg.max_len, hp["batch_size"])
  elif hp["training"] == "sequence":
    groups = sequence_examples(seqs, cfg.max_len, hp["batch_size"])
  elif hp["training"] == "window":
    groups = window_examples(seqs, cfg.max_len, hp["window_stride"],
                             hp["batch_size"])
  else:
    raise ValueError(f"training {hp['training']!r}; expected 'prefix', "
                     "'sequence' or 'window'")
  if not sum(len(g) for g in groups):
    raise ValueError(f"{data.name}: no training examples (sequences too short)")
  all_users = np.concatenate([np.full(len(s), u, np.int64) for u, s in enumerate(seqs)])
  sampler = NegativeSampler(all_users, np.concatenate(seqs), data.num_items)

  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  init_key, dropout_key = jax.random.split(key)
  params = nn.unbox(jax.jit(model.init)({"params": init_key},
                               jnp.zeros((1, cfg.max_len), jnp.int32))["params"])
  loss_type = hp["loss"]
  _, tx, step, encode = _compiled(cfg, hp["learning_rate"], loss_type)
  opt_state = tx.init(params)

  sets = {s: common.eval_set(data, s) for s in common.EVAL_SPLITS}
  eval_inputs = {s: left_aligned(es.histories, cfg.max_len) for s, es in sets.items()}
  ebs = hp["eval_batch_size"]

  def user_vectors(prm, split):
    tok, lens = eval_inputs[split]
    out = [np.asarray(encode(prm, jnp.asarray(tok[s:s + ebs]), jnp.asarray(lens[s:s + ebs])))
           for s in range(0, len(tok), ebs)]
    return (np.concatenate(out) if out else np.zeros((0, cfg.hidden), np.float32))

  def run_eval(prm, vec, split, both=False):
    items = np.asarray(prm["item_embedding"][1:], np.float32)
    return common.evaluate(lambda rows: vec[rows] @ items.T, sets[split],
                           mask_history=hp["mask_history"], ties=hp["ties"],
                           both=both)

  n_steps = 0

  def train_epoch(state, epoch):
    del epoch
    nonlocal n_steps
    prm, opt = state
    losses = []
    for g, idx in epoch_batches(groups, rng):
      ex = groups[g]
      seq_b, pos_b, tgt_b = ex.tokens[idx], ex.positions[idx], ex.targets[idx]
      users_b = np.repeat(ex.users[idx], tgt_b.shape[1])
      if loss_type == "bce":
        neg_b = sampler.sample(users_b, rng).reshape(tgt_b.shape).astype(np.int32)
      else:
        neg_b = np.zeros(tgt_b.shape, np.int32)
      pad = ex.rows_per_batch - len(idx)
      if pad:  # one shape per group: padded rows have no target
        seq_b = np.concatenate([seq_b, np.zeros((pad,) + seq_b.shape[1:], np.int32)])
        pos_b = np.concatenate([pos_b, np.zeros((pad,) + pos_b.shape[1:], np.int32)])
        tgt_b = np.concatenate([tgt_b, np.full((pad,) + tgt_b.shape[1:], -1, np.int32)])
        neg_b = np.concatenate([neg_b, np.zeros((pad,) + neg_b.shape[1:], np.int32)])
      prm, opt, loss = step(
          prm, opt, jax.random.fold_in(dropout_key, n_steps),
          jnp.asarray(seq_b), jnp.asarray(tgt_b), jnp.asarray(pos_b),
          jnp.asarray(neg_b))
      n_steps += 1
      losses.append(loss)
    return (prm, opt), float(np.mean(jax.device_get(losses)))

  def validate(state):
    prm = state[0]
    res = run_eval(prm, user_vectors(prm, "validation"), "validation")
    return res["primary"][common.VALID_METRIC]

  fit = common.fit_with_early_stopping(
      "sasrec", (params, opt_state), train_epoch, validate,
      epochs=hp["epochs"], patience=hp["patience"], log=log)
  best_params = fit.best_state[0]
  vecs = {split: user_vectors(best_params, split) for split in common.EVAL_SPLITS}
  metrics = common.final_metrics(
      lambda split: run_eval(best_params, vecs[split], split, both=True))
  user_emb = {split: (sets[split].users, vecs[split].astype(np.float32))
              for split in common.EVAL_SPLITS}
  return common.BaselineResult(
      model="sasrec", hparams=hp, metrics=metrics, history=fit.history,
      epochs_run=fit.epochs_run, best_epoch=fit.best_epoch,
      item_embeddings=np.asarray(best_params["item_embedding"][1:], np.float32),
      user_embeddings=user_emb, seconds=timer(),
      model_state=(dataclasses.asdict(cfg), jax.device_get(best_params)))
