"""Bad input gets a ValueError/TypeError naming the argument."""
import pytest
import torch
from torch import nn

import ibnorm


@pytest.mark.parametrize("cls,args", [(ibnorm.IBLayerNorm, (8,)), (ibnorm.IBRMSNorm, (8,)), (ibnorm.IBGroupNorm, (2, 8)),
                                      (ibnorm.IBBatchNorm1d, (8,)), (ibnorm.IBBatchNorm2d, (8,)), (ibnorm.IBBatchNorm3d, (8,))])
def test_constructor_errors(cls, args):
    with pytest.raises(ValueError, match=r"strength must be in \(0, 1\]"):
        cls(*args, compression="power", strength=1.5)
    with pytest.raises(ValueError, match=r"strength must be in \(0, inf\)"):
        cls(*args, compression="tanh", strength=0.0)
    with pytest.raises(ValueError, match="compression must be one of"):
        cls(*args, compression="sigmoid")
    with pytest.raises(ValueError, match="order must be one of"):
        cls(*args, order="sideways")
    with pytest.raises(ValueError, match="learnable_strength"):
        cls(*args, compression="none", learnable_strength=True)
    with pytest.raises(TypeError, match="strength"):
        cls(*args, strength="0.5")


def test_input_shape_errors():
    with pytest.raises(ValueError, match="normalized_shape"):
        ibnorm.IBLayerNorm((4, 5))(torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="normalized_shape"):
        ibnorm.IBRMSNorm(8)(torch.randn(3, 7))
    with pytest.raises(ValueError, match="input must be 4D"):
        ibnorm.IBBatchNorm2d(3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="input must be 2D or 3D"):
        ibnorm.IBBatchNorm1d(3)(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="channels"):
        ibnorm.IBBatchNorm2d(3)(torch.randn(2, 4, 4, 4))
    with pytest.raises(ValueError, match="input must have shape"):
        ibnorm.IBGroupNorm(2, 4)(torch.randn(2, 6, 3))
    with pytest.raises(TypeError, match="floating-point"):
        ibnorm.IBLayerNorm(4)(torch.ones(2, 4, dtype=torch.long))


def test_other_argument_errors():
    with pytest.raises(ValueError, match="num_channels must be divisible"):
        ibnorm.IBGroupNorm(3, 8)
    with pytest.raises(ValueError, match="normalized_shape"):
        ibnorm.IBLayerNorm(0)
    with pytest.raises(ValueError, match="eps"):
        ibnorm.IBLayerNorm(4, eps=-1.0)
    with pytest.raises(ValueError, match="momentum"):
        ibnorm.IBBatchNorm1d(4, momentum=1.5)
    with pytest.raises(ValueError, match="num_features"):
        ibnorm.IBBatchNorm1d(0)
    with pytest.raises(ValueError, match="noise_train"):
        ibnorm.LayerNormalNorm(4, noise_train=-1)


def test_registry_and_convert_errors():
    with pytest.raises(ValueError, match="norm must be a registered name"):
        ibnorm.get_norm_layer("ib_layer_cube")
    with pytest.raises(TypeError, match="norm must be"):
        ibnorm.get_norm_layer(3)
    with pytest.raises(ValueError, match="target must be"):
        ibnorm.convert_norms(nn.Sequential(nn.LayerNorm(4)), "fancy")
    with pytest.raises(TypeError, match="model must be"):
        ibnorm.convert_norms("not a model", "tanh")
    with pytest.raises(ValueError, match="model must contain"):
        ibnorm.convert_norms(nn.LayerNorm(4), "tanh")


def test_the_functional_api_checks_its_arguments_like_the_layers():
    import numpy as np
    import ibnorm.functional as F
    from ibnorm.reference import GroupStats
    x = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match=r"weight must have shape \(3,\)"):
        F.ib_batch_norm(x, None, weight=torch.ones(4))  # C + 1 elements: refused, not truncated
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        F.ib_layer_norm(x, 5, torch.ones(5), torch.zeros(6))
    with pytest.raises(ValueError, match="strength must be in"):
        F.ib_layer_norm(x, 5, compression="tanh", strength=0.0)  # NaN everywhere before
    with pytest.raises(ValueError, match="strength must be in"):
        F.ib_rms_norm(x, 5, compression="power", strength=1.5)
    with pytest.raises(ValueError, match=r"running statistics must have shape \(3,\)"):
        F.ib_batch_norm(x, GroupStats(torch.zeros(2), torch.ones(2), None, None, None), training=False)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\)"):
        F.ib_group_norm(x, 1, torch.ones(3), torch.zeros(4))
    # a numpy float is a float; None is the op's default on every path, as in the reference
    y = F.ib_layer_norm(x, 5, compression="tanh", strength=np.float32(0.3))
    torch.testing.assert_close(y, F.ib_layer_norm(x, 5, compression="tanh", strength=0.3))
    ibnorm.IBLayerNorm(5, compression="tanh", strength=np.float64(0.3))
    for impl in ("auto", "reference"):
        torch.testing.assert_close(F.ib_layer_norm(x, 5, compression="power", strength=None, impl=impl),
                                   F.ib_layer_norm(x, 5, compression="power", strength=0.5, impl="reference"))
