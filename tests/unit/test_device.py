"""Device and precision selection: precision follows the hardware, CUDA without a GPU is a user
error, the legacy bf16 flag maps to a precision."""

import pytest
import torch

from modresnet import config as configs

CPU = torch.device("cpu")


def test_precision_follows_the_hardware():
    from modresnet.device import DeviceError, select_precision

    assert select_precision("auto", "cpu").dtype is None
    assert select_precision("fp32", "cpu").name == "fp32"
    with pytest.raises(DeviceError, match="only on a CUDA GPU"):
        select_precision("bf16", "cpu")
    h100, t4 = (9, 0), (7, 5)
    assert select_precision("auto", "cuda", h100).dtype == torch.bfloat16
    auto_t4 = select_precision("auto", "cuda", t4)
    assert auto_t4.dtype == torch.float16 and auto_t4.scaler
    assert not select_precision("bf16", "cuda", h100).scaler
    with pytest.raises(DeviceError, match="compute capability 8.0"):
        select_precision("bf16", "cuda", t4)
    assert select_precision("fp32", "cuda", t4).dtype is None


def test_legacy_bf16_flag_maps_to_precision():
    old = configs.paper().to_dict()
    old["train"].pop("precision")
    for flag, expected in ((True, "auto"), (False, "fp32")):
        old["train"]["bf16"] = flag
        assert configs.from_dict(old).train.precision == expected


def test_cuda_without_a_gpu_is_a_user_error():
    from modresnet.device import select_device
    from modresnet.errors import UserError

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(UserError, match="no CUDA GPU"):
        select_device("cuda")
