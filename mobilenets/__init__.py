"""MobileNets for the people who ship them: faithful architectures, profile, train, export."""
from . import detection, segmentation
from .core.errors import UsageError
from .models import FAMILIES, VARIANTS, MobileNet, ModelConfig, get_variant, list_models
from .weights import create_model, resolve_model
from .weights.convert import convert

__version__ = "0.1.0"


__all__ = ["FAMILIES", "VARIANTS", "MobileNet", "ModelConfig", "UsageError", "__version__", "convert", "create_model",
           "detection", "get_variant", "list_models", "resolve_model", "segmentation"]
