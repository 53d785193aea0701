"""Registers the embedded default: `$RECJAX_DATA_DIR/synthetic`.

Names: `synthetic_<task>`, `synthetic_rec`, `synthetic_rec_aux`. The files
need not exist until a dataset is requested (`recjax prepare` writes them).
"""
from __future__ import annotations

from seqio_tasks import _dirs
from seqio_tasks.registry import register_prepared

PREPARED_DIR = _dirs.dataset_dir("RECJAX_SYNTHETIC_DIR", "synthetic")
NAMES = register_prepared(PREPARED_DIR, dataset_name="synthetic")

# The same world prepared with item slots for ILM / RSLLM (the quickstart's
# `recjax prepare --name=synthetic_slots --prompt=item_slots=replace
# --vocab=<synthetic>/vocab/spiece.model`): `synthetic_slots_*`.
SLOTS_DIR = _dirs.dataset_dir("RECJAX_SYNTHETIC_SLOTS_DIR", "synthetic_slots")
SLOTS_NAMES = register_prepared(SLOTS_DIR, dataset_name="synthetic_slots")

# The same world for RSLLM: title and id, then an ID slot after each mention,
# and a user slot after each history (the quickstart's `recjax prepare
# --name=synthetic_rsllm --prompt=item_slots=append --prompt=user_slot=true
# --tasks=retrieval,ranking,rating --vocab=<synthetic>/vocab/spiece.model`).
RSLLM_DIR = _dirs.dataset_dir("RECJAX_SYNTHETIC_RSLLM_DIR", "synthetic_rsllm")
RSLLM_NAMES = register_prepared(RSLLM_DIR, dataset_name="synthetic_rsllm")
