"""Builds the tiny Hugging Face tokenizers in tests/testdata/ (no network).

  .venv/bin/python tests/testdata/make_tiny_tokenizer.py

Runs with the project venv (`tokenizers` only). Two byte-level BPE tokenizers
(vocabulary ~300) trained on the few lines below, each written as a Hugging
Face checkpoint would ship it (`tokenizer.json`, `tokenizer_config.json`,
`special_tokens_map.json`):

  tiny_hf_tokenizer/      Llama-2-like: ids 0, 1, 2 are <pad>, <s>, </s>; a
                          post-processor adds <s> (as Llama's does), which
                          recjax's encode must not; add_bos_token true.
  tiny_hf_tokenizer_id0/  Llama-3/Qwen2-like: the byte alphabet comes first, so
                          id 0 is the real token "!"; <s>, </s>, <pad> are
                          added tokens at the end; BOS is named only in
                          special_tokens_map.json and generation_config.json.
"""
from __future__ import annotations

import json
import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from tokenizers import trainers

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB_SIZE = 300
TEXT = [
    'A user bought, in order: "Great Lash Mascara" (item_1042); '
    '"Oil-Free Acne Wash" (item_377); "Soft Brush Set" (item_88).',
    "What will the user buy next? Which of these will the user buy next?",
    'A user rated: "Toy Story" 5; "Heat" 3; "Fargo" 4. How will the user '
    'rate "Casablanca" (1 to 5)?',
    "Which items are masked? item_377; item_5521. What is the title of "
    "item_1042?",
    "Café crème, naïve façade — déjà vu! Ünïcödé: 日本語のテキスト, emoji 🎬🍿.",
    "Which will the user prefer: \"Rose Lip Balm\" (item_12) or \"Car Wax\" "
    "(item_901)? The user prefers item_12!",
] * 4


def _byte_level_bpe(special_tokens):
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=VOCAB_SIZE, special_tokens=special_tokens,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False)
  tok.train_from_iterator(TEXT, trainer=trainer)
  return tok


def _write(name, tok, config, special_map, generation=None):
  out = os.path.join(HERE, name)
  os.makedirs(out, exist_ok=True)
  tok.save(os.path.join(out, "tokenizer.json"), pretty=False)
  files = {"tokenizer_config.json": config,
           "special_tokens_map.json": special_map}
  if generation is not None:
    files["generation_config.json"] = generation
  for fname, obj in files.items():
    with open(os.path.join(out, fname), "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
      f.write("\n")
  print(f"{out}: {tok.get_vocab_size(with_added_tokens=True)} tokens")


def _added(content):
  # The AddedToken dict form transformers writes into tokenizer_config.json.
  return {"__type": "AddedToken", "content": content, "lstrip": False,
          "normalized": False, "rstrip": False, "single_word": False,
          "special": True}


def main():
  # Llama-2-like: specials first (ids 0, 1, 2); BOS added by the template.
  tok = _byte_level_bpe(["<pad>", "<s>", "</s>"])
  tok.post_processor = processors.TemplateProcessing(
      single="<s> $A", pair="<s> $A <s> $B",
      special_tokens=[("<s>", tok.token_to_id("<s>"))])
  _write("tiny_hf_tokenizer", tok,
         config={"add_bos_token": True, "add_eos_token": False,
                 "bos_token": _added("<s>"), "eos_token": _added("</s>"),
                 "pad_token": "<pad>", "unk_token": None,
                 "model_max_length": 512,
                 "tokenizer_class": "PreTrainedTokenizerFast"},
         special_map={"bos_token": "<s>", "eos_token": "</s>",
                      "pad_token": "<pad>"})

  # Llama-3/Qwen2-like: id 0 is "!", specials appended after the merges.
  tok = _byte_level_bpe([])
  tok.add_special_tokens(["<s>", "</s>", "<pad>"])
  _write("tiny_hf_tokenizer_id0", tok,
         config={"eos_token": "</s>", "pad_token": _added("<pad>"),
                 "model_max_length": 512,
                 "tokenizer_class": "PreTrainedTokenizerFast"},
         special_map={"bos_token": _added("<s>"), "eos_token": "</s>",
                      "pad_token": "<pad>"},
         generation={"bos_token_id": tok.token_to_id("<s>"),
                     "eos_token_id": [tok.token_to_id("</s>")]})


if __name__ == "__main__":
  main()
