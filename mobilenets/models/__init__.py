from .network import MobileNet, ModelConfig
from .registry import VARIANTS, Variant, create_model, get_variant, list_models, model_config
from .specs import FAMILIES

__all__ = ["FAMILIES", "VARIANTS", "MobileNet", "ModelConfig", "Variant", "create_model", "get_variant",
           "list_models", "model_config"]
