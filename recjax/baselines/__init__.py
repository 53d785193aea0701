"""Classical recommenders (Pop, BPR-MF, SASRec) trained and evaluated on a prepared dir.

They give the reference numbers the language models are compared with, and the
collaborative item/user embeddings ILM and RSLLM consume. See README.md.
"""
