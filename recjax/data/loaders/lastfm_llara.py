"""Last.fm as processed by LLaRA (Liao et al. 2024): sliding-window rows per user.

  id2name.txt       `item_id::artist name` (UTF-8)
  train.jsonl       rows {"seq": [up to 10 previous ids], "len_seq", "next"};
                    a user's rows are consecutive and a row with "seq": []
                    starts a new user, so a user's sequence is the `next` of
                    each of their rows, in order
  valid/test        `*_all_prefixes_NAPO.jsonl` when present (same layout as
                    train: every prefix of each held-out user, so full
                    sequences), else `valid.jsonl`/`test.jsonl`, one row per
                    user: that user's sequence is `seq + [next]`

LLaRA splits by user; here every user of every file becomes one user
(`train_<k>`, `valid_<k>`, `test_<k>`) so the whole log can be prepared and
re-split leave-one-out. There is no time: timestamps are the position in the
user's sequence (0, 1, 2, ...), so chronological order is LLaRA's order.
No ratings. A row whose `seq` does not end with the previous row's `next` is
malformed (field 'seq').
"""
from __future__ import annotations

import pathlib

from recjax.data.dataset import DatasetBuilder, RecDataset
from recjax.data.errors import ErrorPolicy
from recjax.data.loaders import _io

SPLITS = ("train", "valid", "test")


def _int(value) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, str)):
    raise ValueError(value)
  return int(value)


def load(input_path: str, *, on_error: str = "raise",
         eval_rows: str = "auto", missing_title: str = "skip") -> RecDataset:
  """`eval_rows`: 'auto' (all-prefix files if present), 'all_prefixes', 'window'."""
  if eval_rows not in ("auto", "all_prefixes", "window"):
    raise ValueError("lastfm_llara: eval_rows must be auto|all_prefixes|window")
  directory = pathlib.Path(input_path)
  if directory.is_file():
    directory = directory.parent
  policy = ErrorPolicy(on_error)
  b = DatasetBuilder("lastfm_llara", policy, missing_title=missing_title)
  names = directory / "id2name.txt"
  for lineno, text in _io.iter_lines(names, policy):
    iid, sep, name = text.partition("::")
    if not sep:
      policy.error(names, lineno, None, "expected `id::name`", "malformed_line")
      continue
    if not iid.strip():
      policy.error(names, lineno, "id", "missing", "missing_field:id")
      continue
    b.add_item(iid.strip(), name)

  files = []
  for split in SPLITS:
    prefixes = directory / f"{split}_all_prefixes_NAPO.jsonl"
    plain = directory / f"{split}.jsonl"
    if split == "train":
      files.append((split, plain, True))
    elif eval_rows == "all_prefixes" or (eval_rows == "auto" and
                                         prefixes.is_file()):
      files.append((split, prefixes, True))
    elif plain.is_file() or eval_rows == "window":
      files.append((split, plain, False))
  b.meta["files"] = [str(f) for _, f, _ in files]
  for split, path, rows_per_prefix in files:
    _read(split, path, rows_per_prefix, b, policy)
  return b.build(item_field="next")


def _read(split, path, rows_per_prefix: bool, b: DatasetBuilder,
          policy: ErrorPolicy) -> None:
  user, seq_len, last = -1, 0, None
  for lineno, rec in _io.iter_records(path, policy, "json"):
    try:
      seq = [_int(x) for x in rec["seq"]]
    except KeyError:
      policy.error(path, lineno, "seq", "missing", "missing_field:seq")
      continue
    except (TypeError, ValueError):
      policy.error(path, lineno, "seq", "not a list of ids", "malformed_line")
      continue
    nxt = _io.field_value(policy, path, lineno, rec, "next", _int,
                          "malformed_line")
    if nxt is _io.SKIP:
      continue
    if not rows_per_prefix:
      user += 1
      for t, item in enumerate(seq + [nxt]):
        b.add_interaction(f"{split}_{user}", item, t, None, path=path,
                          line=lineno)
      continue
    if not seq:
      user, seq_len = user + 1, 0
    elif user < 0 or seq[-1] != last:
      policy.error(path, lineno, "seq", "does not continue the previous "
                   "row's sequence", "malformed_line")
      continue
    b.add_interaction(f"{split}_{user}", nxt, seq_len, None, path=path,
                      line=lineno)
    seq_len, last = seq_len + 1, nxt
