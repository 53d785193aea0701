"""`run_baseline`: train + evaluate one baseline on a prepared dir and write its outputs.

Output directory (written atomically):

  metrics.json             validation/test metrics (+ masked/unmasked variants),
                           hparams, epochs run, best epoch, per-epoch history,
                           wall seconds
  item_embeddings.npy      float32 [num_items, dim], prepared item index order
  user_embeddings_{validation,test}.npy
                           float32 [num_eval_users, dim]: the vector that
                           scored each held-out user (score = u . item)
  user_index_{validation,test}.npy
                           int64 [num_eval_users]: prepared user indices of
                           those rows
  embeddings.json          format description (see README.md)
  model.msgpack            SASRec only: the trained parameters (flax msgpack),
                           their config in embeddings.json["model_config"]
                           (RSLLM's user slot runs the model; `load_model`)
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Callable

import numpy as np

from recjax.baselines import candidates
from recjax.baselines import common
from recjax.data.prepared import PreparedData, atomic_directory

EMBEDDINGS_FORMAT = "recjax.baseline_embeddings/1"
MODELS = ("pop", "bpr", "sasrec")


def _trainer(model: str) -> Callable[..., common.BaselineResult]:
  if model == "pop":
    from recjax.baselines.popularity import train_popularity
    return train_popularity
  if model == "bpr":
    from recjax.baselines.bpr import train_bpr
    return train_bpr
  if model == "sasrec":
    from recjax.baselines.sasrec import train_sasrec
    return train_sasrec
  raise ValueError(f"unknown baseline {model!r}; expected one of {MODELS}")


def train_baseline(model: str, data: PreparedData, *, seed: int = 0,
                   epochs: int | None = None, log=print,
                   **hparams) -> common.BaselineResult:
  """In-memory variant of `run_baseline` (tests, benchmarks)."""
  fn = _trainer(model)
  if model == "pop":
    return fn(data, seed=seed, log=log, **hparams)
  return fn(data, seed=seed, epochs=epochs, log=log, **hparams)


def write_result(result: common.BaselineResult, data: PreparedData,
                 output_dir: str | os.PathLike, *, data_dir: str | None = None,
                 seed: int = 0, overwrite: bool = True) -> None:
  """Writes the files listed in the module docstring, atomically."""
  item_ids = data.item_ids
  emb = np.asarray(result.item_embeddings, np.float32)
  if emb.shape[0] != data.num_items:
    raise ValueError(f"item embeddings {emb.shape} != {data.num_items} items")
  files: dict[str, Any] = {
      "item_embeddings": {"file": "item_embeddings.npy", "dtype": "float32",
                          "shape": list(emb.shape)}}
  with atomic_directory(output_dir, overwrite=overwrite) as tmp:
    np.save(tmp / "item_embeddings.npy", emb)
    for split, (users, vec) in result.user_embeddings.items():
      vec = np.asarray(vec, np.float32)
      np.save(tmp / f"user_embeddings_{split}.npy", vec)
      np.save(tmp / f"user_index_{split}.npy", np.asarray(users, np.int64))
      files[f"user_embeddings_{split}"] = {
          "file": f"user_embeddings_{split}.npy", "dtype": "float32",
          "shape": list(vec.shape), "index_file": f"user_index_{split}.npy"}
    meta = {
        "format": EMBEDDINGS_FORMAT, "model": result.model,
        "dim": int(emb.shape[1]), "num_items": data.num_items,
        "num_users": data.num_users, "dataset": data.name,
        "item_ids_checksum": common.item_checksum(item_ids),
        "score": "dot(user_embedding, item_embedding)",
        "item_order": "prepared items.jsonl index order",
        "files": files,
    }
    if result.model_state is not None:
      from flax import serialization  # pylint: disable=g-import-not-at-top
      config, params = result.model_state
      (tmp / "model.msgpack").write_bytes(
          serialization.msgpack_serialize(params))
      meta["model_config"] = dict(config)
      meta["files"]["model"] = {"file": "model.msgpack", "format": "flax msgpack"}
    _write_json(tmp / "embeddings.json", meta)
    ranking = _ranking_metrics(result, data, data_dir)
    _write_json(tmp / "metrics.json", {
        "model": result.model, "dataset": data.name, "data_dir": data_dir,
        "seed": seed, "hparams": result.hparams,
        "validation": result.metrics["validation"],
        "test": result.metrics["test"],
        "variants": {k: v for k, v in result.metrics.items()
                     if k not in ("validation", "test")},
        "valid_metric": common.VALID_METRIC,
        "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "history": result.history, "wall_seconds": result.seconds,
        "protocol": "leave-one-out (LS valid_and_test, order TO), full ranking",
        **({"ranking": ranking} if ranking else {}),
    })


def _ranking_metrics(result: common.BaselineResult, data: PreparedData,
                     data_dir: str | None) -> dict[str, Any]:
  """The baseline on the ranking prompts' candidates of `data_dir` (the
  LLaRA protocol's lists; `recjax.baselines.candidates`), per split."""
  if not data_dir:
    return {}
  out: dict[str, Any] = {}
  for split, (users, vectors) in result.user_embeddings.items():
    cases = candidates.ranking_cases(data, data_dir, split)
    if cases is None:
      continue
    targets, cands = cases
    if len(targets) != len(users):
      raise ValueError(f"{data_dir}: {len(targets)} {split} ranking cases but "
                       f"{len(users)} held-out users")
    out[split] = candidates.candidate_metrics(vectors, result.item_embeddings,
                                              targets, cands)
  if out:
    out["protocol"] = ("the candidates of the prepared ranking prompts "
                       "(target + sampled negatives), score = user . item")
  return out


def run_baseline(model: str, data_dir: str, output_dir: str, *, seed: int = 0,
                 epochs: int | None = None, overwrite: bool = True, log=print,
                 **hparams) -> dict:
  """Trains `model` ('pop'|'bpr'|'sasrec') on `data_dir`, writes `output_dir`.

  Returns the metrics.json content. With `overwrite=False` an existing
  `output_dir` is refused before any training. `log` gets one line per epoch
  (None: silent).
  """
  _trainer(model)  # an unknown model fails before the data is read
  if not overwrite and pathlib.Path(output_dir).exists():
    raise FileExistsError(f"{output_dir} exists; pass overwrite to replace it")
  data = PreparedData.load(data_dir)
  result = train_baseline(model, data, seed=seed, epochs=epochs, log=log,
                          **hparams)
  write_result(result, data, output_dir, data_dir=str(data_dir), seed=seed,
               overwrite=overwrite)
  return json.loads((pathlib.Path(output_dir) / "metrics.json").read_text())


def load_embeddings(output_dir: str | os.PathLike,
                    data: PreparedData | None = None, *,
                    item_ids: list[str] | None = None) -> dict[str, Any]:
  """Reads a baseline's embeddings; refuses a catalogue (`data`'s, or the
  `item_ids` of a prepared directory's items.jsonl) whose item ids differ."""
  d = pathlib.Path(output_dir)
  meta = json.loads((d / "embeddings.json").read_text(encoding="utf-8"))
  if meta.get("format") != EMBEDDINGS_FORMAT:
    raise ValueError(f"{d / 'embeddings.json'}: format {meta.get('format')!r}")
  if data is not None:
    item_ids = data.item_ids
  if item_ids is not None:
    got = common.item_checksum(item_ids)
    if got != meta["item_ids_checksum"]:
      raise ValueError(f"{d}: embeddings were trained on another catalogue "
                       f"({meta['item_ids_checksum']} != {got})")
  out = {"meta": meta, "item_embeddings": np.load(d / "item_embeddings.npy")}
  for split in common.EVAL_SPLITS:
    if (d / f"user_embeddings_{split}.npy").is_file():
      out[f"user_embeddings_{split}"] = np.load(d / f"user_embeddings_{split}.npy")
      out[f"user_index_{split}"] = np.load(d / f"user_index_{split}.npy")
  return out


def load_model(output_dir: str | os.PathLike,
               data: PreparedData | None = None, *,
               item_ids: list[str] | None = None
              ) -> tuple[dict[str, Any], Any]:
  """(model config dict, params) of a baseline that saved its model (SASRec);
  refuses, as `load_embeddings`, another catalogue, naming the files."""
  from flax import serialization  # pylint: disable=g-import-not-at-top
  d = pathlib.Path(output_dir)
  meta = load_embeddings(d, data, item_ids=item_ids)["meta"]
  if "model_config" not in meta or not (d / "model.msgpack").is_file():
    raise ValueError(
        f"{d}: no saved model (model.msgpack); it is written by `recjax "
        f"baseline --model=sasrec` (this is a {meta.get('model')!r} output, "
        "or one written before models were saved: re-run the baseline)")
  params = serialization.msgpack_restore((d / "model.msgpack").read_bytes())
  return meta["model_config"], params


def _write_json(path: pathlib.Path, obj: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=_default)
    f.write("\n")


def _default(x):
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  raise TypeError(f"not JSON serialisable: {type(x)}")
