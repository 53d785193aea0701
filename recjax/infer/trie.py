"""A token trie over an item catalogue, for decoding only valid item ids.

Built once per catalogue with vectorised numpy (a lexicographic sort of the
padded token matrix), so a 1,000,000-item catalogue builds in seconds and
takes tens of MB. Layout:

* Every item is its tokens followed by EOS; nodes are the distinct prefixes
  (root = node 0, EOS nodes are the terminal leaves, one per distinct
  tokenisation).
* Node ids are assigned depth by depth in sorted order, so the children of a
  node are the *contiguous* id range [child_offsets[n], child_offsets[n + 1])
  and are sorted by token: that is the whole CSR structure (`node_token`,
  int16 when the vocabulary allows, and `child_offsets` int32: 6 bytes per
  node on the device). The host adds a terminal-node -> item map for
  `items_of` (8 bytes per distinct item).
* `allowed(state)` scatters the tokens of at most `max_children` children per
  node into an [n, V] mask; the few "wide" nodes with more children (the root
  of a big catalogue, digit positions of numeric ids) have a precomputed
  bit-packed dense row [V / 32] uint32 that is gathered and unpacked instead.
* `advance(state, token)` is a vectorised binary search over the node's
  sorted children; unknown tokens (or a dead state) give state -1, which
  allows nothing.

The device side is `TrieConstraint`, a `flax.struct.dataclass` of jnp arrays,
so it is a jit *argument* (one compilation serves any catalogue of the same
array shapes) implementing the `recjax.infer.decoding` constraint protocol.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Optional, Sequence

import flax.struct
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
DEFAULT_MAX_CHILDREN = 64
_ENCODE_BATCH = 10_000


def _search_steps(vocab_size: int) -> int:
  """Binary-search iterations enough for any node (<= vocab_size children)."""
  return max(1, int(np.ceil(np.log2(vocab_size + 1))))


@flax.struct.dataclass
class TrieConstraint:
  """Device arrays of a `CatalogueTrie`; the decoding constraint protocol."""
  node_token: Array     # int16/int32 [num_nodes]: token into the node
  child_offsets: Array  # int32 [num_nodes + 1]: CSR children ranges
  wide_nodes: Array    # int32 [W]: sorted ids of nodes with > max_children
  wide_bits: Array     # uint32 [max(W, 1), ceil(V / 32)]: their masks
  vocab_size: int = flax.struct.field(pytree_node=False)
  max_children: int = flax.struct.field(pytree_node=False)

  def init_state(self, n: int) -> Array:
    return jnp.zeros((n,), jnp.int32)

  def allowed(self, state: Array) -> Array:
    """bool [n, V]: tokens that continue some item from each state."""
    n = state.shape[0]
    live = state >= 0
    safe = jnp.where(live, state, 0)
    start = self.child_offsets[safe]
    count = jnp.where(live, self.child_offsets[safe + 1] - start, 0)
    j = jnp.arange(self.max_children, dtype=jnp.int32)
    idx = jnp.minimum(start[:, None] + j, self.node_token.shape[0] - 1)
    tok = jnp.where(j < count[:, None], self.node_token[idx].astype(jnp.int32),
                    self.vocab_size)
    rows = jnp.broadcast_to(jnp.arange(n)[:, None], tok.shape)
    mask = jnp.zeros((n, self.vocab_size), bool).at[rows, tok].set(
        True, mode='drop')
    if self.wide_nodes.shape[0] == 0:
      return mask
    wide = count > self.max_children
    row = jnp.clip(jnp.searchsorted(self.wide_nodes, safe), 0,
                   self.wide_nodes.shape[0] - 1)
    words = self.wide_bits[row]  # [n, ceil(V/32)]
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    dense = bits.reshape(n, -1)[:, :self.vocab_size].astype(bool)
    return jnp.where(wide[:, None], dense, mask)

  def advance(self, state: Array, tokens: Array) -> Array:
    """Child of `state` along `tokens`, or -1 if there is none."""
    live = state >= 0
    safe = jnp.where(live, state, 0)
    start = self.child_offsets[safe]
    end = jnp.where(live, self.child_offsets[safe + 1], start)
    last = self.node_token.shape[0] - 1
    tokens = tokens.astype(jnp.int32)

    def step(_, bounds):  # lower bound of `tokens` in node_token[lo:hi]
      lo, hi = bounds
      mid = (lo + hi) // 2
      at = self.node_token[jnp.minimum(mid, last)].astype(jnp.int32)
      right = (at < tokens) & (lo < hi)
      return jnp.where(right, mid + 1, lo), jnp.where(right, hi, mid)
    lo, _ = lax.fori_loop(0, _search_steps(self.vocab_size), step,
                          (start, end))
    at = self.node_token[jnp.minimum(lo, last)].astype(jnp.int32)
    found = (lo < end) & (at == tokens)
    return jnp.where(live & found, lo, -1).astype(jnp.int32)


def _np_advance(node_token, child_offsets, state, tokens, steps):
  """Host (numpy) version of `TrieConstraint.advance`."""
  live = state >= 0
  safe = np.where(live, state, 0)
  start = child_offsets[safe].astype(np.int64)
  end = np.where(live, child_offsets[safe + 1], start)
  lo, hi = start.copy(), end.copy()
  last = len(node_token) - 1
  for _ in range(steps):
    mid = (lo + hi) // 2
    right = (node_token[np.minimum(mid, last)] < tokens) & (lo < hi)
    lo, hi = np.where(right, mid + 1, lo), np.where(right, hi, mid)
  found = (lo < end) & (node_token[np.minimum(lo, last)] == tokens)
  return np.where(live & found, lo, -1).astype(np.int32)


class CatalogueTrie:
  """Token trie of a catalogue (see module docstring)."""

  def __init__(self, node_token: np.ndarray, child_offsets: np.ndarray,
               terminal_nodes: np.ndarray, terminal_items: np.ndarray, *,
               vocab_size: int, eos_id: int, max_children: int,
               num_items: int):
    self.node_token = node_token
    self.child_offsets = child_offsets
    # Host only, for items_of: sorted terminal (EOS) nodes and their items.
    self.terminal_nodes = terminal_nodes
    self.terminal_items = terminal_items
    self.vocab_size = int(vocab_size)
    self.eos_id = int(eos_id)
    self.max_children = int(max_children)
    self.num_items = int(num_items)
    num_children = np.diff(child_offsets)
    self.wide_nodes = np.flatnonzero(num_children > max_children).astype(
        np.int32)
    words = -(-self.vocab_size // 32)
    dense = np.zeros((max(len(self.wide_nodes), 1), words * 32), bool)
    for r, node in enumerate(self.wide_nodes):
      dense[r, node_token[child_offsets[node]:child_offsets[node + 1]]] = True
    # Bit j of word w is token 32 * w + j.
    packed = np.packbits(dense, axis=-1, bitorder='little')
    self.wide_bits = np.ascontiguousarray(packed).view('<u4').astype(np.uint32)
    self._device: Optional[TrieConstraint] = None

  @property
  def first_child(self) -> np.ndarray:
    return self.child_offsets[:-1]

  @property
  def num_children(self) -> np.ndarray:
    return np.diff(self.child_offsets)

  @property
  def num_nodes(self) -> int:
    return len(self.node_token)

  @classmethod
  def build(cls, token_sequences: Sequence[Sequence[int]], *, vocab_size: int,
            eos_id: int = 1, max_children: int = DEFAULT_MAX_CHILDREN
           ) -> 'CatalogueTrie':
    """Trie of `token_sequences` (item tokens without EOS), in item order.

    Items with identical tokenisations share one terminal node, which maps
    back to the first such item (`items_of`).
    """
    m = len(token_sequences)
    if m == 0:
      raise ValueError('CatalogueTrie.build: empty catalogue.')
    lengths = np.fromiter((len(t) for t in token_sequences), np.int64, m)
    if lengths.min() == 0:
      raise ValueError(f'CatalogueTrie.build: item {int(np.argmin(lengths))} '
                       'has no tokens.')
    flat = np.fromiter((x for t in token_sequences for x in t), np.int64,
                       int(lengths.sum()))
    bad = (flat <= 0) | (flat == eos_id) | (flat >= vocab_size)
    if bad.any():
      item = int(np.searchsorted(np.cumsum(lengths), np.argmax(bad),
                                 side='right'))
      raise ValueError(f'CatalogueTrie.build: item {item} has token '
                       f'{int(flat[np.argmax(bad)])} (0, EOS={eos_id} and ids '
                       f'>= vocab_size={vocab_size} are not item tokens).')
    depth = int(lengths.max()) + 1
    mat = np.full((m, depth), -1, np.int32)  # -1 pads sort before any token
    rows = np.repeat(np.arange(m), lengths)
    cols = np.arange(len(flat)) - np.repeat(np.cumsum(lengths) - lengths,
                                            lengths)
    mat[rows, cols] = flat
    mat[np.arange(m), lengths] = eos_id
    order = np.lexsort(mat.T[::-1])  # stable: duplicates keep item order
    mat = mat[order]
    valid = mat >= 0
    differs = np.ones_like(valid)
    differs[1:] = np.logical_or.accumulate(mat[1:] != mat[:-1], axis=1)
    new = differs & valid  # row r starts a new prefix of length d + 1
    # Ids depth-major, row order within a depth; root is 0.
    counts = new.sum(axis=0)
    base = 1 + np.concatenate([[0], np.cumsum(counts)[:-1]])
    num_nodes = 1 + int(counts.sum())
    node_token = np.zeros(num_nodes, np.int32)
    parent = np.zeros(num_nodes, np.int64)
    terminal_nodes, terminal_items = [], []
    prev_ids = np.zeros(m, np.int64)  # node of each row's prefix so far
    for d in range(depth):
      r = np.flatnonzero(new[:, d])
      ids = base[d] + np.arange(len(r))
      node_token[ids] = mat[r, d]
      parent[ids] = prev_ids[r]
      col = np.full(m, -1, np.int64)
      col[r] = ids
      col = np.maximum.accumulate(col)  # rows sharing the prefix share the id
      ends = mat[r, d] == eos_id
      terminal_nodes.append(ids[ends])
      terminal_items.append(order[r[ends]])
      prev_ids = np.where(valid[:, d], col, prev_ids)
    # parent[1:] is non-decreasing (depth-major ids, sorted rows), so the
    # children of a node are one contiguous run and node n's run starts after
    # all children of nodes < n: CSR offsets.
    children = np.bincount(parent[1:], minlength=num_nodes)
    child_offsets = np.concatenate([[1], 1 + np.cumsum(children)]).astype(
        np.int32)
    token_dtype = np.int16 if vocab_size <= np.iinfo(np.int16).max else (
        np.int32)
    terminal_nodes = np.concatenate(terminal_nodes).astype(np.int32)
    terminal_items = np.concatenate(terminal_items).astype(np.int32)
    by_node = np.argsort(terminal_nodes)
    return cls(node_token.astype(token_dtype), child_offsets,
               terminal_nodes[by_node], terminal_items[by_node],
               vocab_size=vocab_size, eos_id=eos_id,
               max_children=max_children, num_items=m)

  def constraint(self) -> TrieConstraint:
    """The device-side constraint (built once, then cached)."""
    if self._device is None:
      self._device = TrieConstraint(
          node_token=jnp.asarray(self.node_token),
          child_offsets=jnp.asarray(self.child_offsets),
          wide_nodes=jnp.asarray(self.wide_nodes),
          wide_bits=jnp.asarray(self.wide_bits),
          vocab_size=self.vocab_size, max_children=self.max_children)
    return self._device

  @property
  def nbytes(self) -> int:
    """Host arrays plus device arrays (if `constraint()` was called)."""
    host = sum(a.nbytes for a in (self.node_token, self.child_offsets,
                                  self.terminal_nodes, self.terminal_items,
                                  self.wide_nodes, self.wide_bits))
    device = 0
    if self._device is not None:
      device = sum(x.nbytes for x in jax.tree_util.tree_leaves(self._device))
    return int(host + device)

  def items_of(self, tokens: Any) -> np.ndarray:
    """Catalogue index of each decoded sequence [..., T], or -1.

    A sequence is an item iff its tokens up to and including the first EOS are
    exactly that item's tokens + EOS (tokens after EOS are ignored). Items with
    identical tokenisations cannot be told apart: the first one is returned.
    """
    tokens = np.asarray(tokens)
    flat = tokens.reshape(-1, tokens.shape[-1]).astype(np.int64)
    state = np.zeros(len(flat), np.int32)
    ended = np.zeros(len(flat), bool)
    for t in range(flat.shape[1]):
      nxt = _np_advance(self.node_token, self.child_offsets, state,
                        flat[:, t], _search_steps(self.vocab_size))
      state = np.where(ended, state, nxt)
      ended |= flat[:, t] == self.eos_id
    pos = np.clip(np.searchsorted(self.terminal_nodes, state), 0,
                  len(self.terminal_nodes) - 1)
    hit = ended & (state >= 0) & (self.terminal_nodes[pos] == state)
    item = np.where(hit, self.terminal_items[pos], -1)
    return item.reshape(tokens.shape[:-1])

  def __repr__(self):
    return (f'CatalogueTrie(items={self.num_items}, nodes={self.num_nodes}, '
            f'wide={len(self.wide_nodes)}, V={self.vocab_size}, '
            f'{self.nbytes / 2**20:.1f} MiB)')


def tokenize(vocabulary: Any, texts: Sequence[str], *,
             batch_size: int = _ENCODE_BATCH) -> list:
  """Token ids of each text, as `vocabulary.encode` gives them (no EOS).

  SentencePiece vocabularies are encoded a batch at a time through their
  processor (the same ids as `encode`); progress goes to stderr for big
  catalogues.
  """
  texts = list(texts)
  proc = getattr(vocabulary, 'tokenizer', None)
  batched = proc is not None and hasattr(proc, 'EncodeAsIds')
  out, t0 = [], time.time()
  for s in range(0, len(texts), batch_size):
    chunk = texts[s:s + batch_size]
    if batched:
      out.extend(list(x) for x in proc.EncodeAsIds(chunk))
    else:
      out.extend(list(vocabulary.encode(x)) for x in chunk)
    if len(texts) > 100_000:
      print(f'tokenize: {min(s + batch_size, len(texts))}/{len(texts)} items '
            f'({time.time() - t0:.1f}s)', file=sys.stderr, flush=True)
  return out


def build_catalogue_trie(vocabulary: Any, texts: Iterable[str], *,
                         vocab_size: Optional[int] = None,
                         max_children: int = DEFAULT_MAX_CHILDREN
                        ) -> CatalogueTrie:
  """Trie of item texts tokenised by a seqio Vocabulary.

  Args:
    vocabulary: seqio Vocabulary (its `eos_id` ends items).
    texts: item identifiers as the model generates them, in catalogue order.
    vocab_size: the model's (padded) vocabulary size; default
      `vocabulary.vocab_size`.
    max_children: nodes with more children use a dense row (module docstring).
  """
  tokens = tokenize(vocabulary, list(texts))
  eos = vocabulary.eos_id if vocabulary.eos_id is not None else 1
  return CatalogueTrie.build(
      tokens, vocab_size=vocab_size or vocabulary.vocab_size, eos_id=eos,
      max_children=max_children)
