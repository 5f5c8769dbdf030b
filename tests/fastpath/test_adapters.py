"""Version gate and runner detection of the vLLM adapters (no engine needed)."""

from __future__ import annotations

import pytest

from emolab.fastpath.adapters import UnsupportedVLLM, attach_to_runner, check_version, runner_kind


@pytest.mark.parametrize("version", ["0.26.0", "0.26.3", "0.32.0", "0.32.1"])
def test_supported_versions(version):
    check_version(version)


@pytest.mark.parametrize("version", ["0.25.1", "0.27.0", "0.31.9", "1.0.0"])
def test_other_versions_are_refused_with_a_pointer_to_hf(version):
    with pytest.raises(UnsupportedVLLM, match="--backend hf"):
        check_version(version)


def test_runner_kind_by_module():
    v2 = type("GPUModelRunner", (), {"__module__": "vllm.v1.worker.gpu.model_runner"})
    v1 = type("GPUModelRunner", (), {"__module__": "vllm.v1.worker.gpu_model_runner"})
    assert runner_kind(v2()) == "v2" and runner_kind(v1()) == "v1"


def test_a_runner_without_the_expected_methods_is_refused():
    runner = type("Odd", (), {"__module__": "vllm.v1.worker.gpu_model_runner",
                              "execute_model": lambda self, scheduler_output: None})()
    with pytest.raises(UnsupportedVLLM, match="_prepare_inputs"):
        attach_to_runner(runner, steering=None)
