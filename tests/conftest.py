"""Test setup: JAX on the CPU with 8 fake devices, so every sharding path runs on a real mesh."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
import importlib.util  # noqa: E402,F401  (gin-config 0.5.0 needs it imported first)
import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir():
  """../shared beside the project; tests that need it skip with a reason when absent."""
  if not SHARED.is_dir():
    pytest.skip(f"../shared not found at {SHARED}: real-data checks need it")
  return SHARED
