"""Train MobileNets: ``fit`` (one process or many under torchrun).

```python
from mobilenets.train import fit
result = fit(model="mobilenet_v3_small", data="cifar10:~/data", cifar_stem=3, recipe="default", epochs=20)
```

The modules: ``config`` (the options, validated, and ``config.json``), ``recipes``, ``loop``
(``fit``: per epoch train, validate, checkpoint), ``step`` (one step, its inputs, the schedule of a
config), ``evaluation`` (top-1/top-5/loss, TTA), ``rundir`` (the run directory), ``budget`` (the
time budget), ``speedups`` (the CPU speed-ups), ``model`` (what a run trains), and below them
``schedule``, ``optim``, ``batches``, ``augment``, ``checkpoint``, ``distributed``, ``report``.
"""
from .config import TrainConfig, resolve_config
from .evaluation import evaluate
from .loop import TrainingDiverged, fit
from .optim import EMA
from .recipes import RECIPES, get_recipe
from .report import Reporter
from .rundir import RunResult, read_run_config
from .schedule import lr_at

__all__ = ["EMA", "RECIPES", "Reporter", "RunResult", "TrainConfig", "TrainingDiverged", "evaluate", "fit",
           "get_recipe", "lr_at", "read_run_config", "resolve_config"]
