"""MobileNets for the people who ship them: faithful architectures, profile, train, export."""
from .errors import UsageError
from .models import FAMILIES, VARIANTS, MobileNet, ModelConfig, create_model, get_variant, list_models

__version__ = "0.1.0"


def convert(reference, source: str, name: str, **kwargs) -> MobileNet:
    """Our model carrying a reference implementation's weights (see ``mobilenets.weights.convert``)."""
    from .weights.convert import convert as _convert
    return _convert(reference, source, name, **kwargs)


__all__ = ["FAMILIES", "VARIANTS", "MobileNet", "ModelConfig", "UsageError", "convert", "create_model",
           "get_variant", "list_models", "__version__"]
