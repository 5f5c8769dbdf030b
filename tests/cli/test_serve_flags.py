"""``emolab serve`` flags for parallelism: refused clearly on the HF backend, passed through to vLLM."""

from __future__ import annotations

import pytest

from emolab.cli import main
from emolab.fastpath.server import VLLMOptions, VLLMServerError, all_reduce_flags


@pytest.mark.parametrize("flag", ["--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size"])
def test_parallelism_on_the_hf_backend_is_one_clear_error(flag, smollm2_bundle_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "--vectors", str(smollm2_bundle_path), "--model", "smollm2", "--backend", "hf", flag, "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert flag in err and "--backend vllm" in err


def test_tensor_parallel_all_reduce_workaround_is_automatic_on_cuda_and_says_why():
    flags, why = all_reduce_flags(VLLMOptions(tensor_parallel_size=2), on_cuda=True)
    assert flags[0] == "--disable-custom-all-reduce" and '"fuse_allreduce_rms": false' in flags[-1]
    assert "CUDA IPC" in why and "--custom-all-reduce on" in why
    assert all_reduce_flags(VLLMOptions(tensor_parallel_size=2, custom_all_reduce="on"), on_cuda=True) == ([], None)
    assert all_reduce_flags(VLLMOptions(tensor_parallel_size=1), on_cuda=True) == ([], None)
    assert all_reduce_flags(VLLMOptions(tensor_parallel_size=2), on_cuda=False) == ([], None)
    with pytest.raises(VLLMServerError):
        all_reduce_flags(VLLMOptions(tensor_parallel_size=2, custom_all_reduce="maybe"), on_cuda=True)
