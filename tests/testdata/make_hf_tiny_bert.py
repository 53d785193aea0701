"""Builds the ILM item encoder's golden fixtures (tests/testdata/hf_tiny_bert).

Run with a SEPARATE reference venv (torch never enters recjax's environment):

  python3 -m venv /tmp/refvenv
  /tmp/refvenv/bin/pip install torch==2.13.0 'transformers<5' safetensors numpy
  /tmp/refvenv/bin/python tests/testdata/make_hf_tiny_bert.py

Made with transformers 4.57.6. Two fixtures:

1. A tiny random `BertModel` (config.json, model.safetensors, vocab.txt with
   [CLS] = 2) and golden.npz: two [CLS] ... [SEP] rows (the second padded) and
   BertModel's last_hidden_state. `load_bert_into` + `encode_text` must
   reproduce it (the text branch).
2. qformer_golden.npz: a tiny BLIP-2 Q-Former run by transformers'
   `Blip2QFormerModel` (the real layer stack: shared self-attention, cross-
   attention every 2nd layer to the CF features, query FFN vs text FFN, HF's
   attention masks) plus the heads written out as BLIP-2 applies them, with
   its weights stored under the item encoder's parameter paths
   ('param:<path>') and the outputs of every ItemEncoder method.

Every weight (LayerNorms and biases included) is random, so a mix-up shows.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch
import transformers
from transformers.models.bert import modeling_bert

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'hf_tiny_bert')
SEED = 20240917
CLS, SEP = 2, 3


def _randomize(model: torch.nn.Module, std: float = 0.2) -> None:
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'LayerNorm' in name or 'layernorm' in name:
        p.copy_((1.0 if name.endswith('weight') else 0.0) +
                0.2 * torch.randn_like(p))
      elif name.endswith('bias'):
        p.copy_(0.1 * torch.randn_like(p))
      else:
        p.copy_(std * torch.randn_like(p))


def make_bert():
  torch.manual_seed(SEED)
  config = transformers.BertConfig(
      vocab_size=100, hidden_size=32, num_hidden_layers=2,
      num_attention_heads=4, intermediate_size=37, max_position_embeddings=64,
      type_vocab_size=2, hidden_act='gelu', hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0, layer_norm_eps=1e-12, pad_token_id=0)
  model = transformers.BertModel(config, add_pooling_layer=True).eval()
  _randomize(model)

  rng = np.random.RandomState(SEED)
  ids = rng.randint(5, 100, size=(2, 12)).astype(np.int64)
  ids[:, 0] = CLS
  ids[0, -1] = SEP
  ids[1, 7] = SEP
  ids[1, 8:] = 0
  mask = (ids > 0).astype(np.int64)
  with torch.no_grad():
    hidden = model(input_ids=torch.tensor(ids),
                   attention_mask=torch.tensor(mask)).last_hidden_state

  os.makedirs(OUT, exist_ok=True)
  model.save_pretrained(OUT, safe_serialization=True)
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + [
      f'tok{i}' for i in range(5, 100)]
  with open(os.path.join(OUT, 'vocab.txt'), 'w') as f:
    f.write('\n'.join(vocab) + '\n')
  np.savez_compressed(os.path.join(OUT, 'golden.npz'),
                      input_ids=ids.astype(np.int32),
                      attention_mask=mask.astype(np.int32),
                      last_hidden_state=hidden.numpy().astype(np.float32))


# Tiny Q-Former: K=3 queries, hidden 16, 2 heads, cross-attention in layer 0.
QF = dict(num_items=5, cf_dim=8, num_query_tokens=3, hidden_dim=16,
          num_layers=2, num_heads=2, mlp_dim=24, cross_attention_freq=2,
          text_vocab_size=40, max_text_length=16, type_vocab_size=2,
          cls_token_id=2, dec_token_id=4, contrastive_dim=8, lm_emb_dim=12,
          layer_norm_eps=1e-12)


def _linear_params(prefix: str, linear: torch.nn.Linear) -> dict:
  return {f'{prefix}/kernel': linear.weight.T, f'{prefix}/bias': linear.bias}


def _norm_params(prefix: str, norm: torch.nn.LayerNorm) -> dict:
  return {f'{prefix}/scale': norm.weight, f'{prefix}/bias': norm.bias}


def make_qformer():
  torch.manual_seed(SEED + 1)
  c = QF
  qconfig = transformers.Blip2QFormerConfig(
      vocab_size=c['text_vocab_size'], hidden_size=c['hidden_dim'],
      num_hidden_layers=c['num_layers'], num_attention_heads=c['num_heads'],
      intermediate_size=c['mlp_dim'], hidden_act='gelu',
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      max_position_embeddings=c['max_text_length'],
      layer_norm_eps=c['layer_norm_eps'],
      cross_attention_frequency=c['cross_attention_freq'],
      encoder_hidden_size=c['cf_dim'], use_qformer_text_input=True)
  qformer = transformers.Blip2QFormerModel(qconfig).eval()
  bconfig = transformers.BertConfig(
      vocab_size=c['text_vocab_size'], hidden_size=c['hidden_dim'],
      hidden_act='gelu', layer_norm_eps=c['layer_norm_eps'])
  lm_head = modeling_bert.BertLMPredictionHead(bconfig).eval()
  h = c['hidden_dim']
  extra = torch.nn.ModuleDict({
      'word': torch.nn.Embedding(c['text_vocab_size'], h),
      'pos': torch.nn.Embedding(c['max_text_length'], h),
      'types': torch.nn.Embedding(c['type_vocab_size'], h),
      'cf': torch.nn.Embedding(c['num_items'], c['cf_dim']),
      'itc_item': torch.nn.Linear(h, c['contrastive_dim']),
      'itc_text': torch.nn.Linear(h, c['contrastive_dim']),
      'itm': torch.nn.Linear(h, 2),
      'adapter': torch.nn.Linear(h, c['lm_emb_dim']),
  })
  for m in (qformer, lm_head, extra):
    _randomize(m)
  query_tokens = 0.5 * torch.randn(c['num_query_tokens'], h)
  with torch.no_grad():
    lm_head.decoder.weight = extra['word'].weight  # tied, as in BLIP-2

  k = c['num_query_tokens']
  items = np.array([3, 0], np.int64)
  rng = np.random.RandomState(SEED + 1)
  text = rng.randint(5, c['text_vocab_size'], size=(2, 6)).astype(np.int64)
  text[1, 4:] = 0

  def embed(ids):  # BERT text embeddings: word + position + token type 0
    ids = torch.tensor(ids)
    pos = torch.arange(ids.shape[1])
    return (extra['word'](ids) + extra['pos'](pos)[None] +
            extra['types'](torch.zeros_like(ids)))

  def with_first(ids, first):
    return np.concatenate([np.full((ids.shape[0], 1), first), ids], 1)

  cf = extra['cf'](torch.tensor(items))[:, None]
  queries = query_tokens[None].expand(2, -1, -1)
  normalize = torch.nn.functional.normalize
  with torch.no_grad():
    q_out = qformer(query_embeds=queries, query_length=k,
                    encoder_hidden_states=cf).last_hidden_state
    cls_ids = with_first(text, c['cls_token_id'])
    valid = torch.tensor(cls_ids > 0)
    valid[:, 0] = True
    t_out = qformer(query_embeds=embed(cls_ids), query_length=0,
                    attention_mask=valid.long()).last_hidden_state
    itm_in = torch.cat([queries, embed(cls_ids)], 1)
    itm_mask = torch.cat([torch.ones(2, k, dtype=torch.long), valid.long()], 1)
    itm_out = qformer(query_embeds=itm_in, query_length=k,
                      attention_mask=itm_mask,
                      encoder_hidden_states=cf).last_hidden_state
    itm_logits = extra['itm'](itm_out[:, :k]).mean(1)
    dec_ids = with_first(text[:, :-1], c['dec_token_id'])
    dec_valid = torch.tensor(dec_ids > 0)
    dec_valid[:, 0] = True
    n = k + dec_ids.shape[1]
    allowed = torch.zeros(n, n, dtype=torch.bool)
    allowed[:, :k] = True
    allowed[k:, k:] = torch.tril(torch.ones(n - k, n - k, dtype=torch.bool))
    keys = torch.cat([torch.ones(2, k, dtype=torch.bool), dec_valid], 1)
    itg_mask = (allowed[None] & keys[:, None, :]).long()
    itg_out = qformer(query_embeds=torch.cat([queries, embed(dec_ids)], 1),
                      query_length=k, attention_mask=itg_mask,
                      encoder_hidden_states=cf).last_hidden_state
    golden = {
        'items': items.astype(np.int32), 'text': text.astype(np.int32),
        'queries': q_out, 'text_hidden': t_out,
        'soft_tokens': extra['adapter'](q_out),
        'itc_item': normalize(extra['itc_item'](q_out), dim=-1),
        'itc_text': normalize(extra['itc_text'](t_out[:, 0]), dim=-1),
        'itm_logits': itm_logits,
        'itg_logits': lm_head(itg_out[:, k:]),
    }

    params = {
        'query_tokens': query_tokens,
        'cf_table/embedding': extra['cf'].weight,
        'embeddings/word_embeddings/embedding': extra['word'].weight,
        'embeddings/position_embeddings/embedding': extra['pos'].weight,
        'embeddings/token_type_embeddings/embedding': extra['types'].weight,
        'lm_head/bias': lm_head.bias,
    }
    params.update(_norm_params('embeddings/LayerNorm', qformer.layernorm))
    for name in ('itc_item', 'itc_text', 'adapter'):
      params.update(_linear_params(
          {'itc_item': 'itc_item_proj', 'itc_text': 'itc_text_proj'}.get(
              name, name), extra[name]))
    params.update(_linear_params('itm_head', extra['itm']))
    params.update(_linear_params('lm_head/dense', lm_head.transform.dense))
    params.update(_norm_params('lm_head/LayerNorm',
                               lm_head.transform.LayerNorm))
    for i, layer in enumerate(qformer.encoder.layer):
      blocks = [('attention', layer.attention)]
      if layer.has_cross_attention:
        blocks.append(('crossattention', layer.crossattention))
      for ours, block in blocks:
        for proj in ('query', 'key', 'value'):
          params.update(_linear_params(f'layer_{i}/{ours}/{proj}',
                                       getattr(block.attention, proj)))
        params.update(_linear_params(f'layer_{i}/{ours}/out',
                                     block.output.dense))
        params.update(_norm_params(f'layer_{i}/{ours}/LayerNorm',
                                   block.output.LayerNorm))
      for suffix in ('', '_query'):
        params.update(_linear_params(
            f'layer_{i}/intermediate{suffix}/dense',
            getattr(layer, f'intermediate{suffix}').dense))
        out = getattr(layer, f'output{suffix}')
        params.update(_linear_params(f'layer_{i}/output{suffix}/dense',
                                     out.dense))
        params.update(_norm_params(f'layer_{i}/output{suffix}/LayerNorm',
                                   out.LayerNorm))

  arrays = {k: np.asarray(v.detach().numpy(), v.detach().numpy().dtype)
            if torch.is_tensor(v) else v for k, v in golden.items()}
  arrays = {k: v.astype(np.float32) if v.dtype.kind == 'f' else v
            for k, v in arrays.items()}
  arrays.update({f'param:{k}': np.ascontiguousarray(
      v.detach().numpy().astype(np.float32)) for k, v in params.items()})
  arrays['config'] = np.array(json.dumps(QF))
  np.savez_compressed(os.path.join(OUT, 'qformer_golden.npz'), **arrays)


def main():
  make_bert()
  make_qformer()
  for name in os.listdir(OUT):
    os.chmod(os.path.join(OUT, name), 0o644)  # save_pretrained writes 0600
  sizes = {n: os.path.getsize(os.path.join(OUT, n)) for n in sorted(
      os.listdir(OUT))}
  print('wrote', sizes, 'total', sum(sizes.values()))


if __name__ == '__main__':
  main()
