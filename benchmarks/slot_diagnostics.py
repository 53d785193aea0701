"""How much a slot model's LM reads its slots (ILM, RSLLM checkpoints).

Takes the same gin files and flags as `recjax eval` for the checkpoint (model
gin, runs/eval.gin, the method's model gin, CHECKPOINT_PATH, the task) and,
on `--batches` unpacked batches of the validation split, reports:

* the LM's next-item loss and token accuracy with the slots as trained
  (`present`), with every slot vector zeroed (`zeroed`), and with every item
  replaced by another under one random permutation of the catalogue
  (`swapped`: each item slot holds another item's vector, and RSLLM's user
  slot the recommender's state over the swapped history). An LM that reads
  its slots loses clearly when they are zeroed or swapped; one that ignores
  them does not;
* the soft tokens' norms (item and user slots apart) against the LM's word
  embeddings' (median over the vocabulary rows in use);
* the gradient norm of the loss per trainable subtree at the checkpoint
  (LoRA adapters, the LM's base, each child of the slot module).

Usage (the quickstart's RSLLM, after `bash launch/quickstart.sh`):
  .venv/bin/python benchmarks/slot_diagnostics.py \\
    --gin_file=models/flan_t5_tiny.gin --gin_file=runs/eval.gin \\
    --gin_file=runs/lora.gin --gin_file=runs/rsllm_model.gin \\
    --gin.SASREC_DIR="'$HOME/.cache/recjax/quickstart/baseline_sasrec'" \\
    --gin.CHECKPOINT_PATH="'$HOME/.cache/recjax/quickstart/train_rsllm'" \\
    --gin.MIXTURE_OR_TASK_NAME="'synthetic_rsllm_rec'" \\
    --gin.TASK_FEATURE_LENGTHS="{'inputs': 768, 'targets': 16, 'slot_items': 48}" \\
    --gin.ACTIVATION_DTYPE="'float32'"
`--gin.diagnose.batches=N` / `batch_size` / `seed` change the sample. The
last stdout line is one JSON object with every figure.
"""
from __future__ import annotations

import importlib.util  # noqa: F401  (gin-config 0.5.0 needs it before gin)
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gin  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from recjax import slots  # noqa: E402
from recjax.train import optimizers  # noqa: E402
from recjax.train import gin_utils  # noqa: E402
from recjax.train import model_api  # noqa: E402

VARIANTS = ("present", "zeroed", "swapped")


def permute_items(slot_items: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Item slot values v (index + 1) -> perm[v - 1] + 1; padding (0) and
  user slots unchanged."""
  out = slot_items.copy()
  is_item = (slot_items > 0) & (slot_items != slots.USER_SLOT_ITEM)
  out[is_item] = perm[slot_items[is_item] - 1] + 1
  return out


def subtree_norms(grads, params_key: str) -> dict[str, float]:
  """Gradient norm per group (`optimizers.norm_group`, as the trainer's
  `train.subtree_norms` logs them): 'lora', '<params_key>/<child>' for the
  slot module, the LM's own subtrees by name."""
  groups = jax.tree_util.tree_map_with_path(
      lambda path, _: optimizers.norm_group(optimizers.param_path(path),
                                            params_key), grads)
  return {k: round(float(v), 6) for k, v in
          sorted(optimizers.group_norms(grads, groups).items())}


@gin.configurable
def diagnose(*, model=gin.REQUIRED, checkpoint_path=gin.REQUIRED,
             mixture_or_task_name=gin.REQUIRED,
             task_feature_lengths=gin.REQUIRED, batches: int = 8,
             batch_size: int = 16, seed: int = 0) -> dict:
  import seqio  # pylint: disable=g-import-not-at-top
  from recjax.infer import jobs  # pylint: disable=g-import-not-at-top
  from recjax.train import partitioning, trainer  # pylint: disable=g-import-not-at-top,g-multiple-import
  if not hasattr(model, "slot_vectors"):
    raise SystemExit(f"{type(model).__name__} has no slots: give the "
                     "method's model gin (runs/ilm_model.gin or "
                     "runs/rsllm_model.gin) after runs/eval.gin")
  model = trainer.check_vocab_size(model, mixture_or_task_name, True)
  part = partitioning.Partitioner()  # the eval gin's partitioning
  params = jax.device_get(jobs.load_params(model, checkpoint_path, part,
                                           task_feature_lengths))
  ds = seqio.get_dataset(
      mixture_or_task_name, task_feature_lengths=task_feature_lengths,
      dataset_split="validation", shuffle=False,
      feature_converter=model.feature_converter_cls(pack=False))
  data = [{k: np.asarray(v) for k, v in b.items()}
          for b in ds.batch(batch_size, drop_remainder=True).take(batches)
          .as_numpy_iterator()]
  if not data:
    raise SystemExit(f"{mixture_or_task_name}: no validation batch of "
                     f"{batch_size}")
  # Swap within the catalogue: RSLLM's SASRec table says its size; for ILM
  # the largest item the batches name bounds the permutation.
  table = params[model.params_key].get("recommender", {}).get("item_embedding")
  num_items = (table.shape[0] - 1 if table is not None else max(
      int(b[slots.SLOT_FEATURE][b[slots.SLOT_FEATURE] !=
                                slots.USER_SLOT_ITEM].max()) for b in data))
  perm = np.random.default_rng(seed).permutation(num_items)

  original = model.slot_vectors
  grad = jax.jit(jax.grad(lambda p, b: model.loss_fn(p, b, None)[0]))
  results = {}
  for variant in VARIANTS:
    if variant == "zeroed":  # traced below with the zeroing in place
      model.slot_vectors = lambda p, s: jnp.zeros_like(original(p, s))
    loss = jax.jit(lambda p, b: model.loss_fn(p, b, None)[1])
    sums = []
    for b in data:
      if variant == "swapped":
        b = dict(b, **{slots.SLOT_FEATURE: permute_items(
            b[slots.SLOT_FEATURE], perm)})
      sums.append(jax.device_get(loss(params, b)))
    model.slot_vectors = original
    m = model_api.summarize_metrics(jax.tree_util.tree_map(
        lambda *v: sum(v), *sums))
    results[variant] = {"lm_loss_per_token": round(
        m["cross_ent_loss_per_token"], 4), "accuracy": round(m["accuracy"], 4)}

  # Norms: soft tokens (item / user slots) vs the LM's word embeddings.
  item_norms, user_norms = [], []
  for b in data:
    items = b[slots.SLOT_FEATURE]
    vec = np.asarray(original(params, jnp.asarray(items)))  # [B,S,K,E]
    n = np.linalg.norm(vec, axis=-1)
    item_norms.append(n[(items > 0) & (items != slots.USER_SLOT_ITEM)])
    user_norms.append(n[items == slots.USER_SLOT_ITEM])
  words = np.asarray(params["token_embedder"]["embedding"])
  used = np.unique(np.concatenate([b[k].ravel() for b in data for k in b
                                   if k.endswith("_tokens")]))
  used = used[(used > 0) & (used < words.shape[0])]
  norms = {"word_embedding_median": float(np.median(np.linalg.norm(
      words[used], axis=-1)))}
  for name, x in (("item_slot", item_norms), ("user_slot", user_norms)):
    x = np.concatenate([v.ravel() for v in x]) if x else np.zeros(0)
    if x.size:
      norms[f"{name}_median"] = float(np.median(x))
  grads = jax.tree_util.tree_map(lambda *g: sum(g), *[
      jax.device_get(grad(params, b)) for b in data])
  return {"checkpoint": str(checkpoint_path), "task": mixture_or_task_name,
          "examples": len(data) * batch_size, "loss": results,
          "norms": {k: round(v, 4) for k, v in norms.items()},
          "grad_norms": subtree_norms(grads, model.params_key)}


def main(argv) -> int:
  from recjax.infer import jobs_main  # pylint: disable=g-import-not-at-top
  files, bindings, paths, rest = gin_utils.split_gin_args(argv[1:])
  if rest:
    raise SystemExit(f"unknown arguments {rest}; give --gin_file=... and "
                     "--gin.KEY=VALUE as `recjax eval` takes them")
  bindings = list(bindings) + [
      "diagnose.model = %MODEL", "diagnose.checkpoint_path = %CHECKPOINT_PATH",
      "diagnose.mixture_or_task_name = %MIXTURE_OR_TASK_NAME",
      "diagnose.task_feature_lengths = %TASK_FEATURE_LENGTHS"]
  jobs_main.parse_job_gin(files, bindings, paths)
  out = diagnose()
  loss = out["loss"]
  print(f"{out['task']} validation, {out['examples']} examples, "
        f"{out['checkpoint']}")
  print()
  print("| slots | LM loss per token | token accuracy |")
  print("|---|---:|---:|")
  for v in VARIANTS:
    print(f"| {v} | {loss[v]['lm_loss_per_token']:.4f} | "
          f"{loss[v]['accuracy']:.4f} |")
  print()
  print("norms (median):", out["norms"])
  print("gradient norms per subtree at the checkpoint:", out["grad_norms"])
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
