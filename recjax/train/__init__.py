"""Training: a small T5X-shaped trainer on jax.jit + NamedShardings, optax, orbax.

Modules (one job each):
  partitioning   ('data', 'model') mesh, T5X logical-axis rules, Partitioner
  losses         cross entropy + z-loss with T5X's custom-VJP numerics
  model_api      BaseModel protocol, EncoderDecoderModel (SeqIO enc-dec batches)
  optimizers     T5X-default Adafactor, AdamW, schedules, parameter freezing
  checkpointing  orbax checkpoints of the state and the input position
  metrics_writer TensorBoard event files + metrics.jsonl
  trainer        the pure train step and the gin-configured `train()`
  gin_utils      --gin_file / --gin.KEY=VALUE handling
  train_main     `run_train(gin_files, gin_bindings, gin_search_paths)`
  test_utils     tiny real SeqIO task and Flax module for tests
"""
