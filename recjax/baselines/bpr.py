"""BPR-MF baseline with RecBole's BPR configuration.

Training pairs are every (user, item) of each user's train sequence, shuffled
each epoch; each pair gets one negative drawn uniformly from the items the
user has not interacted with in training (RecBole's uniform sampler). Adam,
lr 1e-3, batch 2048, embedding 64, xavier-normal init, validation NDCG@10
after every epoch with RecBole's early-stopping rule; the best epoch's
parameters are tested.

Patience is 20 and the cap 300 epochs (RecBole's default `epochs`), not the
peer config's stopping_step 5. At lr 1e-3 the validation NDCG@10 of ml-100k
climbs for ~150 epochs by ~1.5e-4 per epoch while it moves ~1.3e-3 (std)
from one epoch to the next (943 users), so a noise peak takes 10-20 epochs
of trend to beat. Patience 5 stops inside the climb (seeds 0-4: test NDCG@10
0.050-0.059, where RecBole's single run happened to go on to epoch 50 and
0.0673), patience 10 (RecBole's default) still does on some seeds; 20
reaches the plateau (seeds 0-4: 0.064-0.076, best epochs 108-158). On the
quickstart's synthetic world the curve also starts with ~8 flat epochs,
which patience 5 can mistake for the end. See recjax/baselines/README.md.
"""
from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from recjax.baselines import common
from recjax.data.prepared import PreparedData
from recjax.models.mf import MF

DEFAULTS = dict(embed_dim=64, learning_rate=1e-3, batch_size=2048, epochs=300,
                patience=20, mask_history=True, ties="pessimistic")


class NegativeSampler:
  """Uniform negatives outside each user's training items (rejection sampling)."""

  def __init__(self, users: np.ndarray, items: np.ndarray, num_items: int):
    self.num_items = num_items
    self.keys = np.unique(users.astype(np.int64) * num_items + items)

  def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    k = users.astype(np.int64) * self.num_items + items
    pos = np.searchsorted(self.keys, k)
    pos = np.minimum(pos, len(self.keys) - 1)
    return self.keys[pos] == k

  def sample(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    neg = rng.integers(0, self.num_items, len(users))
    for _ in range(100):
      bad = np.flatnonzero(self.is_positive(users, neg))
      if not len(bad):
        return neg
      neg[bad] = rng.integers(0, self.num_items, len(bad))
    raise ValueError("could not sample negatives: some user has interacted "
                     "with (almost) every item")


@functools.lru_cache(maxsize=8)
def _compiled(model: MF, learning_rate: float):
  """Jitted train step and scorer, cached so repeated runs compile once."""
  tx = optax.adam(learning_rate)

  @jax.jit
  def step(params, opt_state, u, p, n):
    def loss_fn(prm):
      return model.apply({"params": prm}, u, p, n, method=MF.bpr_loss)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def full_scores(params, u):
    return model.apply({"params": params}, u, method=MF.full_scores)

  return tx, step, full_scores


def train_bpr(data: PreparedData, *, seed: int = 0, epochs: int | None = None,
              log: Callable[[str], None] | None = print,
              **hparams) -> common.BaselineResult:
  unknown = set(hparams) - set(DEFAULTS)
  if unknown:
    raise TypeError(f"unknown BPR hyper-parameters {sorted(unknown)}")
  hp = {**DEFAULTS, **hparams}
  if epochs is not None:
    hp["epochs"] = epochs
  timer = common.Timer()
  seqs = common.train_sequences(data)
  users = np.concatenate([np.full(len(s), u, np.int64) for u, s in enumerate(seqs)])
  items = np.concatenate(seqs).astype(np.int64)
  sampler = NegativeSampler(users, items, data.num_items)
  rng = np.random.default_rng(seed)

  model = MF(data.num_users, data.num_items, hp["embed_dim"])
  params = nn.unbox(jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros(1, jnp.int32),
                               jnp.zeros(1, jnp.int32))["params"])
  tx, step, full_scores = _compiled(model, hp["learning_rate"])
  opt_state = tx.init(params)

  sets = {s: common.eval_set(data, s) for s in common.EVAL_SPLITS}

  def run_eval(prm, split, both=False):
    es = sets[split]
    return common.evaluate(
        lambda rows: full_scores(prm, jnp.asarray(es.users[rows], jnp.int32)),
        es, mask_history=hp["mask_history"], ties=hp["ties"], both=both)

  bs = hp["batch_size"]

  def train_epoch(state, epoch):
    del epoch
    prm, opt = state
    perm = rng.permutation(len(users))
    u_e, p_e = users[perm], items[perm]
    n_e = sampler.sample(u_e, rng)
    losses = []
    for s in range(0, len(u_e), bs):
      prm, opt, loss = step(
          prm, opt, jnp.asarray(u_e[s:s + bs], jnp.int32),
          jnp.asarray(p_e[s:s + bs], jnp.int32),
          jnp.asarray(n_e[s:s + bs], jnp.int32))
      losses.append(loss)
    mean_loss = float(np.mean(jax.device_get(losses))) if losses else 0.0
    return (prm, opt), mean_loss

  fit = common.fit_with_early_stopping(
      "bpr", (params, opt_state), train_epoch,
      lambda state: run_eval(state[0], "validation")["primary"][common.VALID_METRIC],
      epochs=hp["epochs"], patience=hp["patience"], log=log)
  best_params = fit.best_state[0]
  metrics = common.final_metrics(
      lambda split: run_eval(best_params, split, both=True))
  table = np.asarray(best_params["user_embedding"], np.float32)
  user_emb = {split: (sets[split].users, table[sets[split].users])
              for split in common.EVAL_SPLITS}
  return common.BaselineResult(
      model="bpr", hparams=hp, metrics=metrics, history=fit.history,
      epochs_run=fit.epochs_run, best_epoch=fit.best_epoch,
      item_embeddings=np.asarray(best_params["item_embedding"], np.float32),
      user_embeddings=user_emb, seconds=timer())
