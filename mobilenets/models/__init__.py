"""The architectures: paper tables as data (``specs``), the blocks, the one network built from a
table (``network``), the names and published figures (``registry``), and the metadata record a
model carries (``meta``). Nothing here loads weights or sets ``checkpoint_meta``: the loaders in
``weights`` do."""
from .meta import CheckpointMeta
from .network import MobileNet, ModelConfig, unwrap
from .registry import VARIANTS, Variant, build_model, get_variant, list_models, match_models, model_config
from .specs import FAMILIES

__all__ = ["FAMILIES", "VARIANTS", "CheckpointMeta", "MobileNet", "ModelConfig", "Variant", "build_model",
           "get_variant", "list_models", "match_models", "model_config", "unwrap"]
