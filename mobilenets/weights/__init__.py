"""Weights: the registry of public checkpoints (``sources``), download + cache + hash check (``hub``),
conversion of torchvision / timm / Keras weights (``convert``), our file format (``io``), and the
two front doors every verb uses:

- ``create_model(name, pretrained=...)`` (``pretrained``): the architecture (``models.build_model``)
  plus weights: True or a source tag picks a registry checkpoint (downloaded, verified,
  converted), a path loads a file;
- ``resolve_model(target)`` (``resolve``): a model name, a checkpoint, a run directory or an
  exported file -> what to run and its metadata.

Downloads are verified against the strongest digest each publisher gives (``hub.hash_kind``), and
no file is ever unpickled with code: safetensors, ``torch.load(weights_only=True)``, or Keras' h5.
Every model that comes out carries ``model.checkpoint_meta`` (preprocessing, class names,
provenance), which ``save_checkpoint``, ``predict`` and ``export`` read, so nobody restates how
to feed it.
"""
from ..models.meta import CheckpointMeta
from ..models.network import unwrap
from .hub import cache_dir, download, fetch, hash_kind
from .io import from_weights, is_ours, load_checkpoint, load_strict, read_weights, save_checkpoint, suggest_variant
from .pretrained import convert_file, create_model, guess_format, load_foreign, load_pretrained, resolve_source
from .resolve import EXPORT_SUFFIXES, Resolved, is_export, read_sidecar, resolve_model, sidecar_meta, sidecar_path
from .sources import FORMATS, SOURCES, WeightSource, find_source, sources_for

__all__ = ["EXPORT_SUFFIXES", "FORMATS", "SOURCES", "CheckpointMeta", "Resolved", "WeightSource", "cache_dir",
           "convert_file", "create_model", "download", "fetch", "find_source", "from_weights", "guess_format",
           "hash_kind", "is_export", "is_ours", "load_checkpoint", "load_foreign", "load_pretrained", "load_strict",
           "read_sidecar", "read_weights", "resolve_model", "resolve_source", "save_checkpoint", "sidecar_meta",
           "sidecar_path", "sources_for", "suggest_variant", "unwrap"]
