"""Train and evaluate MobileNets: ``fit`` (one process or many under torchrun), ``evaluate_checkpoint``.

```python
from mobilenets.train import fit
result = fit(model="mobilenet_v3_small", data="cifar10:~/data", cifar_stem=3, recipe="default", epochs=20)
```
"""
from .engine import (
    EMA,
    Reporter,
    RunResult,
    TrainConfig,
    TrainingDiverged,
    evaluate,
    evaluate_checkpoint,
    fit,
    lr_at,
    resolve_config,
)
from .recipes import RECIPES, get_recipe

__all__ = ["EMA", "RECIPES", "Reporter", "RunResult", "TrainConfig", "TrainingDiverged", "evaluate",
           "evaluate_checkpoint", "fit", "get_recipe", "lr_at", "resolve_config"]
