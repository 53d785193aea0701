"""recjax: teach language models recommendation knowledge, in JAX/Flax on SeqIO."""
import os as _os

# TensorFlow (pulled in by SeqIO) prints CUDA/oneDNN noise on import; users of
# a recommendation library should not have to read it. Respect explicit
# settings made by the user.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
