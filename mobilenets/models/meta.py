"""What a model says about itself: ``CheckpointMeta``, the record every loader attaches as
``model.checkpoint_meta`` and every writer (checkpoints, export sidecars) serialises. It lives with
the models, below the loaders, so that ``MobileNet`` can declare it and every layer can read it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..core.errors import UsageError
from ..core.preprocessing import Preprocessing
from .network import ModelConfig

FORMAT = "mobilenets"
FORMAT_VERSION = "1"


@dataclass
class CheckpointMeta:
    """Variant name, config, preprocessing, class names and provenance (``extra``: source, url,
    the held-out split of a training run...). Set by the loaders; ``None`` fields mean "not known"."""
    variant: str | None = None
    config: ModelConfig | None = None
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    extra: dict = field(default_factory=dict)

    def to_metadata(self) -> dict[str, str]:
        """safetensors metadata is str -> str: scalars as text, records as JSON."""
        md = {"format": FORMAT, "format_version": FORMAT_VERSION}
        if self.variant:
            md["variant"] = self.variant
        if self.config is not None:
            md["config"] = json.dumps(self.config.to_dict())
            md.update(width=str(self.config.width), resolution=str(self.config.resolution),
                      num_classes=str(self.config.num_classes))
        if self.preprocessing is not None:
            md["preprocessing"] = json.dumps(self.preprocessing.to_dict())
        if self.class_names is not None:
            md["class_names"] = json.dumps(list(self.class_names))
        if self.extra:
            md["extra"] = json.dumps(self.extra)
        return md

    @classmethod
    def from_metadata(cls, md: dict[str, str] | None) -> CheckpointMeta:
        md = md or {}
        try:
            loads = lambda key: json.loads(md[key]) if key in md else None  # noqa: E731
            config, pre = loads("config"), loads("preprocessing")
            return cls(variant=md.get("variant"),
                       config=ModelConfig.from_dict(config) if config else None,
                       preprocessing=Preprocessing.from_dict(pre) if pre else None,
                       class_names=loads("class_names"), extra=loads("extra") or {})
        except (ValueError, TypeError) as exc:
            raise UsageError(f"checkpoint metadata is damaged: {' '.join(str(exc).split())}") from None


