"""Generative-retrieval decoding throughput: trie-constrained vs free beam search.

  .venv/bin/python benchmarks/decode_throughput.py            # 1k, 10k, 100k
  .venv/bin/python benchmarks/decode_throughput.py --quick    # < 1 min smoke
  .venv/bin/python benchmarks/decode_throughput.py --max_items 1000000

A randomly initialised FLAN-T5 tiny (gin_configs/models/flan_t5_tiny.gin sizes,
float32, vocab 4224 like the embedded default) reads retrieval-length inputs
and beam-searches item ids. Catalogues are synthetic ids "item_<6 digits>"
tokenised by a SentencePiece unigram model trained here on synthetic text
(in a temporary directory; nothing is downloaded). Per catalogue size:
trie build seconds (tokenisation separate) and MiB, users/s of constrained
beam search, of unconstrained beam search, and of scoring every item
(`score_candidates` over the whole catalogue in chunks). Sizes above
--decode_max_items only build the trie (memory / build time).

The last line is one JSON object for the largest decoded catalogue:
catalogue, constrained_users_per_s, unconstrained_users_per_s, ratio
(unconstrained / constrained users/s, i.e. the constraint's slowdown; goal
<= 1.3), trie_mib, plus all rows.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..'))
from recjax.infer import predict  # noqa: E402
from recjax.infer import trie as trie_lib  # noqa: E402
from recjax.models import t5  # noqa: E402
from recjax.train import model_api  # noqa: E402
from recjax.train import test_utils  # noqa: E402


def tiny_config(vocab_size: int) -> t5.T5Config:
  return t5.T5Config(vocab_size=vocab_size, emb_dim=64, num_heads=4,
                     head_dim=16, mlp_dim=128, num_encoder_layers=2,
                     num_decoder_layers=2, dtype='float32')


random_params = test_utils.random_t5_params


def item_ids(n: int, seed: int = 0) -> list:
  rng = np.random.RandomState(seed)
  nums = rng.choice(10**6, size=n, replace=False) if n <= 10**6 else (
      np.arange(n))
  return [f'item_{x:06d}' for x in nums]


def train_vocabulary(tmp: str, spm_vocab: int, lines: int):
  """SentencePiece unigram model (T5 ids: pad 0, eos 1, unk 2) on synthetic
  text mixing item ids and words, wrapped as a seqio vocabulary."""
  import seqio  # pylint: disable=g-import-not-at-top
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(1)
  words = ['the', 'user', 'watched', 'bought', 'rated', 'item', 'next',
           'recommend', 'history', 'title', 'brand', 'category', 'and', 'a']
  path = os.path.join(tmp, 'text.txt')
  with open(path, 'w') as f:
    for _ in range(lines):
      parts = [f'item_{x:06d}' for x in rng.randint(0, 10**6, size=4)]
      parts += list(rng.choice(words, size=6))
      rng.shuffle(parts)
      f.write(' '.join(parts) + '\n')
  prefix = os.path.join(tmp, 'spm')
  spm.SentencePieceTrainer.train(
      input=path, model_prefix=prefix, vocab_size=spm_vocab,
      model_type='unigram', pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      hard_vocab_limit=False, minloglevel=2, num_threads=2)
  return seqio.SentencePieceVocabulary(prefix + '.model')


def timed_pair(fa, fb, repeats: int) -> tuple:
  """Median seconds of fa and fb, alternating calls so both see the same
  background load (one warm-up / compile call each first)."""
  jax.block_until_ready(fa())
  jax.block_until_ready(fb())
  ta, tb = [], []
  for _ in range(repeats):
    for fn, times in ((fa, ta), (fb, tb)):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
  return float(np.median(ta)), float(np.median(tb))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--quick', action='store_true',
                  help='1k and 10k items, small batch, 1 repeat (< 1 min).')
  ap.add_argument('--max_items', type=int, default=100_000,
                  help='Largest catalogue (1k, 10k, 100k, 1M up to this).')
  ap.add_argument('--decode_max_items', type=int, default=100_000,
                  help='Larger catalogues only build the trie.')
  ap.add_argument('--vocab_size', type=int, default=4224)
  ap.add_argument('--spm_vocab', type=int, default=2000)
  ap.add_argument('--users', type=int, default=8, help='Batch of users.')
  ap.add_argument('--input_length', type=int, default=128)
  ap.add_argument('--beams', type=int, default=20)
  ap.add_argument('--max_decode_length', type=int, default=8)
  ap.add_argument('--repeats', type=int, default=3)
  ap.add_argument('--score_chunk', type=int, default=2000,
                  help='Candidates per score_candidates call.')
  ap.add_argument('--score_users', type=int, default=2,
                  help='Users timed when scoring catalogues >= 100k.')
  args = ap.parse_args(argv)
  if args.quick:
    args.max_items = min(args.max_items, 10_000)
    args.users, args.repeats, args.spm_vocab = 4, 1, 1000
  sizes = [s for s in (1_000, 10_000, 100_000, 1_000_000)
           if s <= args.max_items] or [args.max_items]

  cfg = tiny_config(args.vocab_size)
  model = model_api.EncoderDecoderModel(t5.Transformer(cfg))
  params = random_params(cfg)
  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.time()
    vocab = train_vocabulary(tmp, args.spm_vocab,
                             lines=5_000 if args.quick else 20_000)
    print(f'# sentencepiece: {vocab.vocab_size} ids trained in '
          f'{time.time() - t0:.1f}s', file=sys.stderr)
    assert vocab.vocab_size <= args.vocab_size
    rng = np.random.RandomState(0)
    enc = jnp.asarray(rng.randint(3, vocab.vocab_size,
                                  size=(args.users, args.input_length)),
                      jnp.int32)
    batch = {'encoder_input_tokens': enc}
    beam = jax.jit(functools.partial(
        predict.predict_batch, model, decode_method='beam',
        num_decodes=args.beams, max_decode_length=args.max_decode_length))
    score = jax.jit(functools.partial(predict.score_candidates, model))

    rows = []
    for n in sizes:
      texts = item_ids(n)
      t0 = time.time()
      tokens = trie_lib.tokenize(vocab, texts)
      tok_s = time.time() - t0
      t0 = time.time()
      trie = trie_lib.CatalogueTrie.build(tokens, vocab_size=args.vocab_size,
                                          eos_id=vocab.eos_id)
      build_s = time.time() - t0
      constraint = trie.constraint()
      lens = np.array([len(t) for t in tokens])
      row = dict(catalogue=n, tokens_mean=float(lens.mean()),
                 tokens_max=int(lens.max()), trie_nodes=trie.num_nodes,
                 wide_nodes=int(len(trie.wide_nodes)),
                 tokenize_s=round(tok_s, 2), trie_build_s=round(build_s, 2),
                 trie_mib=round(trie.nbytes / 2**20, 2))
      if n <= args.decode_max_items:
        if lens.max() + 1 > args.max_decode_length:
          print(f'# warning: items up to {lens.max()} tokens + EOS exceed '
                f'max_decode_length={args.max_decode_length}',
                file=sys.stderr)
        c_s, u_s = timed_pair(
            lambda: beam(params, batch, constraint=constraint),
            lambda: beam(params, batch), args.repeats)
        toks, _ = beam(params, batch, constraint=constraint)
        valid = float((trie.items_of(np.asarray(toks)) >= 0).mean())
        # Score every item for a few users, chunk by chunk.
        t_len = int(lens.max()) + 1
        cands = np.zeros((n, t_len), np.int32)
        for i, t in enumerate(tokens):
          cands[i, :len(t)] = t
          cands[i, len(t)] = vocab.eos_id
        chunk = min(args.score_chunk, n)
        pad = (-n) % chunk
        cands = np.concatenate([cands, np.zeros((pad, t_len), np.int32)])
        cands = cands.reshape(-1, 1, chunk, t_len)
        users = args.score_users if n >= 100_000 else min(args.users, 4)
        if args.quick:
          users = 1

        def score_all(users=users, cands=cands):
          out = []
          for u in range(users):
            out.append([score(params, enc[u:u + 1], jnp.asarray(c))
                        for c in cands])
          return out
        jax.block_until_ready(score(params, enc[:1], jnp.asarray(cands[0])))
        t0 = time.perf_counter()
        jax.block_until_ready(score_all())
        score_users_s = users / (time.perf_counter() - t0)
        row.update(constrained_users_per_s=round(args.users / c_s, 2),
                   unconstrained_users_per_s=round(args.users / u_s, 2),
                   ratio=round(c_s / u_s, 3),
                   valid_items=valid,
                   score_all_users_per_s=round(score_users_s, 3))
      rows.append(row)
      print(json.dumps(row), file=sys.stderr, flush=True)

  cols = [('catalogue', 'items'), ('tokens_mean', 'tok/item'),
          ('trie_nodes', 'nodes'), ('wide_nodes', 'wide'),
          ('trie_build_s', 'build s'), ('tokenize_s', 'tokenize s'),
          ('trie_mib', 'trie MiB'), ('constrained_users_per_s', 'constr u/s'),
          ('unconstrained_users_per_s', 'free u/s'), ('ratio', 'ratio'),
          ('valid_items', 'valid'), ('score_all_users_per_s', 'score-all u/s')]
  print(f'# FLAN-T5 tiny f32, V={args.vocab_size}, {args.users} users x '
        f'{args.input_length} input tokens, beam {args.beams}, '
        f'max_decode_length {args.max_decode_length}, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s)')
  print(' | '.join(f'{h:>12}' for _, h in cols))
  for row in rows:
    print(' | '.join(f'{row.get(k, "-")!s:>12}' for k, _ in cols))
  decoded = [r for r in rows if 'ratio' in r]
  last = decoded[-1] if decoded else rows[-1]
  print(json.dumps(dict(
      catalogue=last['catalogue'],
      constrained_users_per_s=last.get('constrained_users_per_s'),
      unconstrained_users_per_s=last.get('unconstrained_users_per_s'),
      ratio=last.get('ratio'), trie_mib=last['trie_mib'], rows=rows)))


if __name__ == '__main__':
  main()
