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


# The files with the most test time (seconds in a quiet run, 2026-12-08,
# 2-core AMD EPYC, summed over each file's tests from --junitxml:
# rsllm 281, ilm 273, crash_safety 246, aot 222, cli 181, multiprocess 153,
# lora 140, slots 134, item_encoder 127, gin_configs 101), started first so
# that the xdist workers (--dist loadfile, launch/test.sh) do not end on one
# long file while the other idles; every other file keeps its place after.
_LONGEST_FIRST = ("test_rsllm.py", "test_ilm.py", "test_crash_safety.py",
                  "test_aot.py", "test_cli.py", "test_multiprocess.py",
                  "test_lora.py", "test_slots.py", "test_item_encoder.py",
                  "test_gin_configs.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
