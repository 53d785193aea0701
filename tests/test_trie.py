"""recjax.infer.trie: CSR token trie against brute-force prefix sets."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio

from recjax.infer import trie as trie_lib

EOS = 1
ITEMS = [
    [5, 6, 7],     # 0
    [5, 6],        # 1: a prefix of item 0
    [5, 8],        # 2: shares [5]
    [9],           # 3
    [5, 6, 7],     # 4: same tokens as item 0
    [10, 2, 3],    # 5
    [11], [12], [13], [14],  # 6-9: make the root wide (> 4 children)
]


def _brute_allowed(items, prefix, vocab):
  """Tokens that continue `prefix` towards some item (EOS if it is one)."""
  out = np.zeros(vocab, bool)
  for item in items:
    seq = list(item) + [EOS]
    if len(seq) > len(prefix) and seq[:len(prefix)] == list(prefix):
      out[seq[len(prefix)]] = True
  return out


def _walk(constraint, prefixes):
  """Device states after feeding each prefix (padded with -1 = no step)."""
  depth = max(len(p) for p in prefixes)
  toks = np.full((len(prefixes), depth), -1, np.int32)
  for r, p in enumerate(prefixes):
    toks[r, :len(p)] = p

  @jax.jit
  def run(c, toks):
    state = c.init_state(toks.shape[0])
    for t in range(toks.shape[1]):
      state = jnp.where(toks[:, t] >= 0, c.advance(state, toks[:, t]), state)
    return state, c.allowed(state)
  return run(constraint, jnp.asarray(toks))


def _all_prefixes(items, extra=()):
  prefixes = {()}
  for item in items:
    seq = tuple(item) + (EOS,)
    prefixes.update(seq[:i] for i in range(1, len(seq) + 1))
  return sorted(prefixes) + list(extra)


def test_structure_of_a_hand_made_trie():
  t = trie_lib.CatalogueTrie.build(ITEMS, vocab_size=16, max_children=4)
  # Root children sorted: 5, 9, 10, 11, 12, 13, 14 -> the root is wide.
  root = slice(t.first_child[0], t.first_child[0] + t.num_children[0])
  np.testing.assert_array_equal(t.node_token[root], [5, 9, 10, 11, 12, 13, 14])
  np.testing.assert_array_equal(t.wide_nodes, [0])
  # Bit-packed dense row of the root: bit j of word 0 is token j.
  assert int(t.wide_bits[0, 0]) == sum(1 << x for x in (5, 9, 10, 11, 12, 13,
                                                         14))
  # Distinct prefixes (incl. EOS leaves) + root; duplicates share nodes.
  assert t.num_nodes == len(_all_prefixes(ITEMS))
  assert (t.node_token == EOS).sum() == 9  # 10 items, 2 identical
  assert t.nbytes > 0 and 'items=10' in repr(t)


@pytest.mark.parametrize('max_children', [4, 64])
def test_allowed_and_advance_match_brute_force(max_children):
  t = trie_lib.CatalogueTrie.build(ITEMS, vocab_size=16,
                                   max_children=max_children)
  bad = [(5, 7), (4,), (5, 6, 7, 1, 1), (9, 1, 9)]  # not prefixes of items
  prefixes = _all_prefixes(ITEMS, bad)
  state, allowed = _walk(t.constraint(), prefixes)
  state, allowed = np.asarray(state), np.asarray(allowed)
  for r, p in enumerate(prefixes):
    if p in bad:
      assert state[r] == -1 and not allowed[r].any(), p
    else:
      assert state[r] >= 0, p
      np.testing.assert_array_equal(allowed[r],
                                    _brute_allowed(ITEMS, p, 16), str(p))


def test_random_catalogue_matches_brute_force():
  rng = np.random.RandomState(0)
  vocab = 70
  items = [list(rng.randint(2, 12 if i % 3 else vocab,
                            size=rng.randint(1, 5))) for i in range(400)]
  t = trie_lib.CatalogueTrie.build(items, vocab_size=vocab, max_children=8)
  assert len(t.wide_nodes) > 1  # wide and narrow nodes both exercised
  prefixes = _all_prefixes(items)
  state, allowed = _walk(t.constraint(), prefixes)
  assert (np.asarray(state) >= 0).all()
  want = np.stack([_brute_allowed(items, p, vocab) for p in prefixes])
  np.testing.assert_array_equal(np.asarray(allowed), want)
  # items_of: every item maps back to itself, or to the first equal item.
  first = {}
  for i, item in enumerate(items):
    first.setdefault(tuple(item), i)
  seqs = np.zeros((len(items), 6), np.int32)
  for i, item in enumerate(items):
    seqs[i, :len(item) + 1] = item + [EOS]
  np.testing.assert_array_equal(
      t.items_of(seqs), [first[tuple(item)] for item in items])


def test_items_of():
  t = trie_lib.CatalogueTrie.build(ITEMS, vocab_size=16, max_children=4)
  seqs = np.array([
      [5, 6, 7, 1, 0],   # item 0 (item 4 has the same tokens: first wins)
      [5, 6, 1, 0, 0],   # item 1
      [5, 8, 1, 3, 3],   # item 2: tokens after EOS are ignored
      [9, 1, 0, 0, 0],   # item 3
      [5, 6, 7, 0, 0],   # no EOS: not an item
      [10, 2, 1, 0, 0],  # a proper prefix of item 5 + EOS
      [14, 1, 0, 0, 0],  # item 9
      [4, 1, 0, 0, 0],   # unknown token
  ])
  np.testing.assert_array_equal(t.items_of(seqs), [0, 1, 2, 3, -1, -1, 9, -1])
  assert t.items_of(seqs.reshape(2, 4, 5)).shape == (2, 4)


def test_build_rejects_bad_items():
  with pytest.raises(ValueError, match='item 1 has token 1'):
    trie_lib.CatalogueTrie.build([[3], [4, 1]], vocab_size=8)
  with pytest.raises(ValueError, match='item 0 has no tokens'):
    trie_lib.CatalogueTrie.build([[]], vocab_size=8)
  with pytest.raises(ValueError, match='vocab_size=8'):
    trie_lib.CatalogueTrie.build([[3], [9]], vocab_size=8)


def test_build_catalogue_trie_with_a_seqio_vocabulary():
  vocab = seqio.ByteVocabulary()
  texts = ['item_12', 'item_1', 'item_7', 'book', 'item_12']
  t = trie_lib.build_catalogue_trie(vocab, texts)
  assert t.vocab_size == vocab.vocab_size and t.eos_id == vocab.eos_id
  seqs = np.zeros((len(texts), 10), np.int32)
  for i, text in enumerate(texts):
    ids = list(vocab.encode(text)) + [vocab.eos_id]
    seqs[i, :len(ids)] = ids
  np.testing.assert_array_equal(t.items_of(seqs), [0, 1, 2, 3, 0])


def test_large_catalogue_is_compact():
  """100k items of 6-8 tokens: 6 bytes per node (int16 tokens + int32 CSR
  offsets) on host and device, 8 bytes per item on the host, dense rows."""
  rng = np.random.RandomState(1)
  n = 100_000
  mat = rng.randint(2, 300, size=(n, 8))
  lengths = rng.randint(6, 9, size=n)
  items = [row[:k].tolist() for row, k in zip(mat, lengths)]
  t = trie_lib.CatalogueTrie.build(items, vocab_size=512)
  # Every item is its own path below depth 3: ~5 nodes + EOS per item.
  assert t.num_nodes < n * 8
  c = t.constraint()
  assert c.node_token.dtype == jnp.int16 and c.child_offsets.dtype == jnp.int32
  dense = 2 * t.wide_bits.nbytes
  assert t.nbytes <= 2 * 6 * (t.num_nodes + 1) + 8 * n + dense + 8 * 1024
  idx = rng.choice(n, 50, replace=False)
  seqs = np.zeros((50, 9), np.int32)
  for r, i in enumerate(idx):
    seqs[r, :lengths[i] + 1] = items[i] + [EOS]
  np.testing.assert_array_equal(t.items_of(seqs), idx)
