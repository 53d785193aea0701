"""recjax: teach language models recommendation knowledge, in JAX/Flax on SeqIO."""
import os as _os

# TensorFlow (pulled in by SeqIO) prints CUDA/oneDNN noise on import; users of
# a recommendation library should not have to read it. Respect explicit
# settings made by the user.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _cpu_only_with_libtpu() -> bool:
  """Whether libtpu is installed (the `tpu_aot` extra) on a machine with no
  TPU and no CUDA plugin: then JAX would probe for TPUs at every start and
  print libtpu's warnings, though only the CPU can run anything."""
  import glob  # pylint: disable=g-import-not-at-top
  import importlib.util  # pylint: disable=g-import-not-at-top
  if "JAX_PLATFORMS" in _os.environ or glob.glob("/dev/accel*") or (
      _os.path.isdir("/dev/vfio")):
    return False
  find = importlib.util.find_spec
  if find("libtpu") is None:
    return False
  return not any(find(p) for p in ("jax_cuda12_plugin", "jax_cuda13_plugin",
                                   "jax_rocm60_plugin", "jax_rocm7_plugin"))


if _cpu_only_with_libtpu():
  # Compiling ahead for TPU topologies (`recjax aot`) still works: it asks
  # libtpu for a topology explicitly.
  _os.environ["JAX_PLATFORMS"] = "cpu"

__version__ = "0.1.0"
