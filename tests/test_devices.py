"""``resolve_device``: the one check of a user's ``--device`` value (CPU-only here; CUDA paths skip)."""

from __future__ import annotations

import pytest
import torch

from facecoreset_plugin.devices import available_devices, resolve_device
from facecoreset_plugin.errors import InputError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.mark.parametrize("value", ["cpu", " cpu ", torch.device("cpu"), None])
def test_cpu_is_accepted(value):
    assert resolve_device(value) == torch.device("cpu")
    assert resolve_device(value, local_rank=3) == torch.device("cpu")


@no_cuda
@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:3", torch.device("cuda")])
def test_cuda_on_a_cpu_only_machine_is_a_one_line_user_error(value):
    with pytest.raises(InputError) as info:
        resolve_device(value)
    msg = str(info.value)
    assert f"--device {value}" in msg and "CUDA is not available" in msg and "available here: cpu" in msg
    assert "\n" not in msg
    with pytest.raises(InputError, match="CUDA is not available"):
        resolve_device(value, local_rank=1)


@pytest.mark.parametrize("value", ["cuda:abc", "gpu", "", "cuda:-1", "cuda:0:1"])
def test_values_that_are_not_devices_name_the_value_and_the_choices(value):
    with pytest.raises(InputError) as info:
        resolve_device(value)
    msg = str(info.value)
    assert repr(value) in msg and "cpu, cuda or cuda:N" in msg and "available here: cpu" in msg


def test_other_device_types_are_refused():
    with pytest.raises(InputError, match="only cpu and cuda"):
        resolve_device("meta")


def test_available_devices_lists_cpu_and_every_gpu():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert available_devices() == ["cpu"] + [f"cuda:{i}" for i in range(count)]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_rules():
    count = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", torch.cuda.current_device())
    assert resolve_device("cuda", local_rank=count - 1) == torch.device("cuda", count - 1)
    assert resolve_device(f"cuda:{count - 1}", local_rank=0) == torch.device("cuda", count - 1)
    with pytest.raises(InputError, match=f"only {count} CUDA device"):
        resolve_device(f"cuda:{count}")
    with pytest.raises(InputError, match=f"local rank {count} has no GPU"):
        resolve_device("cuda", local_rank=count)
