"""recjax.train.distributed: environment -> jax.distributed.initialize arguments."""
import pytest

from recjax.train import distributed


def test_no_environment_means_one_process():
  assert distributed.initialize_args({}) is None
  assert distributed.initialize_args({'RECJAX_MULTI_HOST': '0'}) is None
  # Nothing asked: returns at once, JAX untouched.
  assert distributed.maybe_initialize(env={}) is False


@pytest.mark.parametrize('value', ['1', 'true', 'TRUE', 'yes'])
def test_multi_host_flag_asks_jax_to_detect_the_cluster(value):
  assert distributed.initialize_args({'RECJAX_MULTI_HOST': value}) == {}


def test_explicit_environment():
  env = {'RECJAX_COORDINATOR_ADDRESS': '10.0.0.2:8476',
         'RECJAX_NUM_PROCESSES': '4', 'RECJAX_PROCESS_ID': '3',
         'RECJAX_LOCAL_DEVICE_IDS': '0,1'}
  assert distributed.initialize_args(env) == {
      'coordinator_address': '10.0.0.2:8476', 'num_processes': 4,
      'process_id': 3, 'local_device_ids': [0, 1]}
  del env['RECJAX_LOCAL_DEVICE_IDS']
  args = distributed.initialize_args(env)
  assert 'local_device_ids' not in args and args['process_id'] == 3


@pytest.mark.parametrize('env, message', [
    ({'RECJAX_COORDINATOR_ADDRESS': 'h:1'},
     'RECJAX_NUM_PROCESSES, RECJAX_PROCESS_ID not'),
    ({'RECJAX_COORDINATOR_ADDRESS': 'h', 'RECJAX_NUM_PROCESSES': '2',
      'RECJAX_PROCESS_ID': '0'}, "RECJAX_COORDINATOR_ADDRESS='h': expected"),
    ({'RECJAX_COORDINATOR_ADDRESS': 'h:1', 'RECJAX_NUM_PROCESSES': 'two',
      'RECJAX_PROCESS_ID': '0'}, "RECJAX_NUM_PROCESSES='two'"),
    ({'RECJAX_COORDINATOR_ADDRESS': 'h:1', 'RECJAX_NUM_PROCESSES': '2',
      'RECJAX_PROCESS_ID': '2'}, 'RECJAX_PROCESS_ID=2: expected 0 <= id < '),
    ({'RECJAX_COORDINATOR_ADDRESS': 'h:1', 'RECJAX_NUM_PROCESSES': '2',
      'RECJAX_PROCESS_ID': '0', 'RECJAX_LOCAL_DEVICE_IDS': '0;1'},
     'RECJAX_LOCAL_DEVICE_IDS'),
])
def test_bad_environment_names_the_variable(env, message):
  with pytest.raises(ValueError, match=message.replace('(', r'\(')):
    distributed.initialize_args(env)


def test_maybe_initialize_passes_the_arguments(monkeypatch):
  calls = []
  import jax
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kw: calls.append(kw))
  env = {'RECJAX_COORDINATOR_ADDRESS': 'localhost:1234',
         'RECJAX_NUM_PROCESSES': '2', 'RECJAX_PROCESS_ID': '1'}
  assert distributed.maybe_initialize(env=env) is True
  assert distributed.maybe_initialize(multi_host=True, env={}) is True
  assert calls == [{'coordinator_address': 'localhost:1234',
                    'num_processes': 2, 'process_id': 1}, {}]
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: True)
  assert distributed.maybe_initialize(env=env) is True  # already up: no call
  assert len(calls) == 2
