"""ibnorm: IBNorm (Information-Bottleneck inspired normalization) layers, peers, registry and conversion.

The library depends on torch alone. ``ibnorm.functional`` is the functional API, ``ibnorm.reference`` the
plain transcription of the definition (``docs/method.md``), ``ibnorm.ops`` the compression ops,
``ibnorm.info`` the MI estimators (optional ``info`` extra), and ``ibnorm.lab`` the experiment suite
(optional ``lab`` extra), which this package never imports.
"""
from . import functional
from .convert import ConversionReport, convert_norms, from_pretrained
from .distributed import IBSyncBatchNorm, convert_sync_ibnorm
from .layers import IBBatchNorm1d, IBBatchNorm2d, IBBatchNorm3d, IBGroupNorm, IBLayerNorm, IBRMSNorm
from .ops import COMPRESSIONS, ORDERS, compress, get_compression
from .peers import BatchNormalNorm1d, BatchNormalNorm2d, DynamicErf, DynamicTanh, LayerNormalNorm
from .registry import create_norm_layer, get_norm_layer, list_norm_layers

__version__ = "0.1.0"

__all__ = [
    "COMPRESSIONS", "ORDERS", "compress", "get_compression", "functional",
    "IBLayerNorm", "IBRMSNorm", "IBGroupNorm", "IBBatchNorm1d", "IBBatchNorm2d", "IBBatchNorm3d",
    "LayerNormalNorm", "BatchNormalNorm1d", "BatchNormalNorm2d", "DynamicTanh", "DynamicErf",
    "get_norm_layer", "create_norm_layer", "list_norm_layers", "convert_norms", "ConversionReport", "from_pretrained",
    "IBSyncBatchNorm", "convert_sync_ibnorm",
]
