import functools

import pytest
from torch import nn

import ibnorm
from ibnorm.registry import canonical_name


def test_every_grouping_and_op_is_registered():
    names = set(ibnorm.list_norm_layers())
    for g in ["layer", "rms", "batch1d", "batch2d", "batch3d", "group"]:
        for op in ["power", "log", "tanh", "none"]:
            assert f"ib_{g}_{op}" in names
    assert {"layernorm", "rmsnorm", "batchnorm2d", "groupnorm", "dyt", "normalnorm_layer", "normalnorm_batch2d"} <= names


@pytest.mark.parametrize("name,cls,op", [("ib_layer_t", ibnorm.IBLayerNorm, "tanh"), ("IB-RMS-S", ibnorm.IBRMSNorm, "power"),
                                         ("ib_batch2d_log", ibnorm.IBBatchNorm2d, "log"), ("ib_group_l", ibnorm.IBGroupNorm, "log")])
def test_names_build_the_right_layer(name, cls, op):
    m = ibnorm.create_norm_layer(name, 16, strength=0.3)
    assert isinstance(m, cls) and m.compression == op and m.init_strength == 0.3
    if cls is ibnorm.IBGroupNorm:
        assert m.num_channels == 16  # channels first, groups by keyword
    assert canonical_name(name).startswith("ib_")


def test_class_and_partial_pass_through():
    assert ibnorm.get_norm_layer(nn.LayerNorm) is nn.LayerNorm
    p = functools.partial(ibnorm.IBLayerNorm, compression="log")
    assert ibnorm.get_norm_layer(p) is p
    assert ibnorm.create_norm_layer(p, 8).compression == "log"
    assert isinstance(ibnorm.create_norm_layer("groupnorm", 64, num_groups=8), nn.GroupNorm)
    assert isinstance(ibnorm.create_norm_layer("dyt", 8), ibnorm.DynamicTanh)
