"""recjax models: `t5` (FLAN-T5 / T5.1.1, T5X-named parameters)."""
from recjax.models.t5 import T5Config, Transformer  # noqa: F401
