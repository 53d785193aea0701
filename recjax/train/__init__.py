"""Training: a small T5X-shaped trainer on jax.jit + NamedShardings, optax, orbax.

Modules (one job each):
  partitioning        ('data', 'model') mesh, T5X logical-axis rules, Partitioner
  losses              cross entropy + z-loss with T5X's custom-VJP numerics
  model_api           BaseModel protocol, EncoderDecoderModel, DecoderOnlyModel
  optimizers          T5X-default Adafactor, AdamW, schedules, freezing, norm groups
  checkpointing       orbax checkpoints of the state and the input position
  metrics_writer      TensorBoard event files + metrics.jsonl
  trainer             the pure train step and the gin-configured `train()`
  distributed         multi-process start-up from RECJAX_* / --multi_host
  gin_utils           --gin_file / --gin.KEY=VALUE handling
  train_main          `run_train(gin_files, gin_bindings, gin_search_paths)`
  aot, aot_main       compile-ahead sizing for TPU slices (`recjax aot`)
  slot_model          an LM reading soft tokens from a slot module (ILM, RSLLM)
  ilm_model           ILM phase 1 (item-text alignment) and its item encoder
  rsllm_model         RSLLM stage 2 (projector, user slot, two InfoNCE losses)
  contrastive_losses  InfoNCE, BLIP-2's ITC / ITM / ITG for the methods above
  test_utils          tiny real SeqIO task and Flax module for tests
"""
