"""The bottom layer: what every other layer may use and that imports nothing of ours.

- ``errors``: ``UsageError``, the one exception the CLI turns into one line and exit code 2;
- ``files``: atomic writes of files and folders (checkpoints, exports, results);
- ``preprocessing``: the ``Preprocessing`` record and a model's default preprocessing;
- ``hardware``: device choice, bf16 support, the C++ compiler, the CPU's name.
"""
from .errors import UsageError

__all__ = ["UsageError"]
