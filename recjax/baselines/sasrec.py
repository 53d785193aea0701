"""SASRec baseline with RecBole's SASRec configuration.

Training (`training='prefix'`, RecBole's data augmentation): every position
i >= 1 of each user's train sequence is one example, history = the previous
(at most `max_len`) items, target = item i; loss `ce` over all items. The
SASRec paper's variant (`training='sequence'`, usually with `loss='bce'`):
one example per user, a target at every position. Adam lr 1e-3, batch 256,
at most 30 epochs, early stopping on validation NDCG@10 (patience 5, RecBole
semantics), best epoch tested. The validation input is the train sequence, the
test input adds the validation item (the model is not retrained on it).
"""
from __future__ import annotations

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
                training="prefix", mask_history=True, ties="pessimistic",
                eval_batch_size=1024)


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


def prefix_examples(seqs: list[np.ndarray], max_len: int):
  """RecBole's augmentation: (history tokens, length, target, user) per position >= 1."""
  hist, targets, users = [], [], []
  for u, s in enumerate(seqs):
    for i in range(1, len(s)):
      hist.append(s[max(0, i - max_len):i])
      targets.append(s[i])
      users.append(u)
  tokens, lengths = left_aligned(hist, max_len)
  return tokens, lengths, np.asarray(targets, np.int32), np.asarray(users, np.int64)


def sequence_examples(seqs: list[np.ndarray], max_len: int):
  """The paper's layout: input s[:-1], target s[1:] at every position (-1 = none)."""
  keep = [u for u, s in enumerate(seqs) if len(s) >= 2]
  tokens, lengths = left_aligned([seqs[u][:-1] for u in keep], max_len)
  targets = np.full(tokens.shape, -1, np.int32)
  for r, u in enumerate(keep):
    t = seqs[u][1:][-max_len:]
    targets[r, :len(t)] = t
  return tokens, lengths, targets, np.asarray(keep, np.int64)


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
    tokens, lengths, targets, ex_users = prefix_examples(seqs, cfg.max_len)
  elif hp["training"] == "sequence":
    tokens, lengths, targets, ex_users = sequence_examples(seqs, cfg.max_len)
  else:
    raise ValueError(f"training {hp['training']!r}; expected 'prefix' or 'sequence'")
  if not len(tokens):
    raise ValueError(f"{data.name}: no training examples (sequences too short)")
  all_users = np.concatenate([np.full(len(s), u, np.int64) for u, s in enumerate(seqs)])
  sampler = NegativeSampler(all_users, np.concatenate(seqs), data.num_items)

  rng = np.random.default_rng(seed)
  key = jax.random.PRNGKey(seed)
  init_key, dropout_key = jax.random.split(key)
  params = nn.unbox(model.init({"params": init_key},
                               jnp.zeros((1, cfg.max_len), jnp.int32))["params"])
  tx = optax.adam(hp["learning_rate"])
  opt_state = tx.init(params)
  loss_type = hp["loss"]

  @jax.jit
  def step(params, opt_state, rng_key, seq, tgt, lens, neg):
    def loss_fn(prm):
      return model.apply({"params": prm}, seq, tgt, lengths=lens,
                         negatives=neg if loss_type == "bce" else None,
                         loss_type=loss_type, deterministic=False,
                         method=SASRec.loss, rngs={"dropout": rng_key})
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def encode(params, seq, lens):
    return model.apply({"params": params}, seq, lens, method=SASRec.encode)

  sets = {s: common.eval_set(data, s) for s in common.EVAL_SPLITS}
  eval_inputs = {s: left_aligned(es.histories, cfg.max_len) for s, es in sets.items()}
  ebs = hp["eval_batch_size"]

  def user_vectors(prm, split):
    tok, lens = eval_inputs[split]
    out = [np.asarray(encode(prm, jnp.asarray(tok[s:s + ebs]), jnp.asarray(lens[s:s + ebs])))
           for s in range(0, len(tok), ebs)]
    return (np.concatenate(out) if out else np.zeros((0, cfg.hidden), np.float32))

  def run_eval(prm, split, both=False):
    vec = user_vectors(prm, split)
    items = np.asarray(prm["item_embedding"][1:], np.float32)
    return common.evaluate(lambda rows: vec[rows] @ items.T, sets[split],
                           mask_history=hp["mask_history"], ties=hp["ties"],
                           both=both), vec

  stopper = common.EarlyStopper(hp["patience"])
  best_params, history = params, []
  bs = hp["batch_size"]
  n = len(tokens)
  epoch, n_steps = -1, 0
  for epoch in range(hp["epochs"]):
    t0 = common.Timer()
    perm = rng.permutation(n)
    losses = []
    for s in range(0, n, bs):
      idx = perm[s:s + bs]
      seq_b, len_b, tgt_b = tokens[idx], lengths[idx], targets[idx]
      neg_b = sampler.sample(np.broadcast_to(ex_users[idx].reshape(
          (-1,) + (1,) * (tgt_b.ndim - 1)), tgt_b.shape).reshape(-1),
          rng).reshape(tgt_b.shape).astype(np.int32)
      if len(idx) < bs:  # pad to one shape: padded rows have no target
        pad = bs - len(idx)
        seq_b = np.concatenate([seq_b, np.zeros((pad,) + seq_b.shape[1:], np.int32)])
        len_b = np.concatenate([len_b, np.ones(pad, np.int32)])
        tgt_b = np.concatenate([tgt_b, np.full((pad,) + tgt_b.shape[1:], -1, np.int32)])
        neg_b = np.concatenate([neg_b, np.zeros((pad,) + neg_b.shape[1:], np.int32)])
      params, opt_state, loss = step(
          params, opt_state, jax.random.fold_in(dropout_key, n_steps),
          jnp.asarray(seq_b), jnp.asarray(tgt_b), jnp.asarray(len_b),
          jnp.asarray(neg_b))
      n_steps += 1
      losses.append(loss)
    mean_loss = float(np.mean(jax.device_get(losses)))
    valid = run_eval(params, "validation")[0]["primary"][common.VALID_METRIC]
    history.append({"epoch": epoch, "loss": mean_loss, "valid": valid,
                    "seconds": t0()})
    common.progress("sasrec", epoch, mean_loss, valid, t0(), log)
    improved, stop = stopper.update(valid, epoch)
    if improved:
      best_params = params
    if stop:
      break

  metrics, user_emb = {}, {}
  for split in common.EVAL_SPLITS:
    res, vec = run_eval(best_params, split, both=True)
    metrics[split] = res["primary"]
    metrics[f"{split}_masked"] = res["masked"]
    metrics[f"{split}_unmasked"] = res["unmasked"]
    user_emb[split] = (sets[split].users, vec.astype(np.float32))
  return common.BaselineResult(
      model="sasrec", hparams=hp, metrics=metrics, history=history,
      epochs_run=epoch + 1, best_epoch=stopper.best_epoch,
      item_embeddings=np.asarray(best_params["item_embedding"][1:], np.float32),
      user_embeddings=user_emb, seconds=timer())
