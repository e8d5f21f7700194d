"""Training: the configuration and its checks, the run directory, resume after an interruption
(same metrics), NaN stop, fine-tuning, the time budget, schedules and recipes, evaluation of runs,
checkpoints and exports, the CLI verbs and two-process DDP on CPU.

Seconds-long runs on synthetic data at 16x16 with a thin model.
"""
import copy
import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from typer.testing import CliRunner

from mobilenets.cli import app
from mobilenets.core.errors import UsageError
from mobilenets.evaluate import evaluate as evaluate_target
from mobilenets.train import Reporter, TrainingDiverged, fit, resolve_config
from mobilenets.train import budget as budget_module
from mobilenets.train.budget import EpochTime, TimeBudget, epoch_cost, epochs_that_fit
from mobilenets.train.config import TrainConfig
from mobilenets.train.evaluation import tta_logits, validates
from mobilenets.train.step import build_optimizer, learning_rate, train_resolution, train_step
from mobilenets.weights.io import load_checkpoint

TINY = dict(model="mobilenet_v3_small", width=0.25, cifar_stem=3, resolution=16, batch_size=32, threads=1,
            data="synthetic:128", eval_batch_size=64)
runner = CliRunner()


def tiny(tmp_path, name="run", **kw):
    return resolve_config(**{"recipe": "default", "epochs": 2, "output": str(tmp_path / name), **TINY, **kw})


class Interrupt(Reporter):
    """Simulates a kill after ``after`` epochs (their state is on disk)."""

    def __init__(self, after):
        super().__init__(enabled=False)
        self.after = after

    def epoch_end(self, row):
        if row["epoch"] == self.after:
            raise KeyboardInterrupt


class Capture(Reporter):
    def __init__(self):
        super().__init__(enabled=False)
        self.lines = []

    def log(self, message):
        self.lines.append(message)


def test_fit_writes_a_run_directory(tmp_path):
    result = fit(tiny(tmp_path), reporter=Reporter(enabled=False))
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "metrics.json", "best.safetensors", "last.safetensors", "state.pt",
                 "curves.png", "summary.json"):
        assert (run / name).is_file(), name
    assert not list(run.glob("*.tmp"))
    assert len(result.history) == 2 and 0 <= result.best_top1 <= 100
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "default" and config["resolved"]["preprocessing"]["kind"] == "cifar"
    assert (run / "metrics.csv").read_text().splitlines()[0].startswith("epoch,epochs,lr,train_loss")
    model, meta = load_checkpoint(run / "best.safetensors")
    assert meta.class_names == [f"class_{i}" for i in range(10)] and meta.preprocessing.resolution == 16
    assert meta.variant == "mobilenet_v3_small" and model.config.cifar_stem == 3
    # eval on the same split gives the training's last val figure (EMA weights are what is saved)
    ev = evaluate_target(run / "last.safetensors", "synthetic:128")
    assert ev["top1"] == pytest.approx(result.last["val_top1"]) and ev["images"] == 32
    assert ev["loss"] == pytest.approx(result.last["val_loss"], rel=1e-4)
    tta = evaluate_target(run / "last.safetensors", "synthetic:128", tta=True)
    assert tta["top1_single"] == pytest.approx(ev["top1"])  # the single view is still reported


def test_mirror_tta_scores_the_mean_logits_of_both_views():
    from mobilenets.core.preprocessing import cifar
    from mobilenets.data.datasets import ImageTensors
    from mobilenets.train import evaluate

    class LeftHalf(torch.nn.Module):  # class 0 when the left half is brighter, else class 1
        def forward(self, x):
            left, right = x[..., :2].mean((1, 2, 3)), x[..., 2:].mean((1, 2, 3))
            return torch.stack([left - right + 0.1, right - left], 1)

    images = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    images[:, :, :, :2] = 200  # left bright: the single view says class 0, the mirror says class 1
    data = ImageTensors(images, torch.zeros(4, dtype=torch.long), ["a", "b"])
    pre = cifar(4)
    single = evaluate(LeftHalf(), data, pre)
    both = evaluate(LeftHalf(), data, pre, tta=True)
    assert single["top1"] == 100 and both["top1_single"] == 100
    assert both["top1"] == 100 and both["loss"] > single["loss"]  # the mean logits: 0.05 margin, not ~1


def test_mirror_shift_tta_averages_six_views():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5))
    x = torch.randn(2, 3, 8, 8)
    net(x)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, padded[..., 2:10, 2:10], padded[..., 0:8, 0:8]]  # shifted by (1, 1) and (-1, -1)
    want = sum(net(v) + net(v.flip(3)) for v in views) / 6
    torch.testing.assert_close(tta_logits(net, x, "mirror-shift"), want)
    torch.testing.assert_close(tta_logits(net, x, "mirror"), (net(x) + net(x.flip(3))) / 2)
    with pytest.raises(UsageError, match="--tta must be one of none, mirror, mirror-shift, got 'shift'"):
        resolve_config(tta="shift")
    assert resolve_config(tta=True).tta == "mirror"


def test_resume_after_interruption_gives_the_same_metrics(tmp_path):
    whole = fit(tiny(tmp_path, "whole", epochs=3), reporter=Reporter(enabled=False))
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path, "cut", epochs=3), reporter=Interrupt(after=2))
    cut = tmp_path / "cut"
    assert len(json.loads((cut / "metrics.json").read_text())) == 2
    resumed = fit(resume=cut, reporter=Reporter(enabled=False))
    drop = ("epoch_time_s", "elapsed_s", "images_per_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(whole.history)
    a = load_checkpoint(tmp_path / "whole" / "last.safetensors")[0].state_dict()
    b = load_checkpoint(cut / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path, epochs=2), reporter=Interrupt(after=1))
    run = tmp_path / "run"
    before = {n: (run / n).read_bytes() for n in ("state.pt", "last.safetensors")}
    config = json.loads((run / "config.json").read_text())
    config["lr"] = 1e30  # finite, so the config is valid, and the second step's loss is NaN
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(TrainingDiverged, match="loss is nan|loss is inf"):
        fit(resume=run, reporter=Reporter(enabled=False))
    assert {n: (run / n).read_bytes() for n in before} == before


def test_fine_tune_with_new_classes(tmp_path):
    fit(tiny(tmp_path, "base", epochs=1, recipe="baseline"), reporter=Reporter(enabled=False))
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / "train" / c / f"{i}.png")
    cap = Capture()
    result = fit(tiny(tmp_path, "ft", epochs=1, data=f"folder:{tmp_path / 'imgs'}", val_size=6,
                      weights=str(tmp_path / "base" / "best.safetensors")), reporter=cap)
    assert any("classifier re-initialised for 3 classes (the checkpoint had 10)" in line for line in cap.lines)
    model, meta = load_checkpoint(result.run_dir / "best.safetensors")
    assert model.config.num_classes == 3 and meta.class_names == ["a", "b", "c"]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["resolved"]["data"]["val_size"] == 6
    # eval finds the held-out images again from what the checkpoint records
    ev = evaluate_target(result.run_dir / "last.safetensors", f"folder:{tmp_path / 'imgs'}")
    assert ev["images"] == 6 and ev["top1"] == pytest.approx(result.last["val_top1"])
    assert evaluate_target(result.run_dir / "last.safetensors", f"folder:{tmp_path / 'imgs'}",
                           val_size=None)["images"] == 6  # None here means "as recorded"
    for everything in ("none", 0):  # no hold-out: all of train/
        assert evaluate_target(result.run_dir, f"folder:{tmp_path / 'imgs'}", val_size=everything)["images"] == 36


def test_train_images_and_the_weights_normalisation(tmp_path):
    """``train_images`` trains on a seeded sample of the training split; ``normalize="weights"``
    normalises as the ``--weights`` model was trained (a fine-tune that keeps its inputs)."""
    from mobilenets.core.preprocessing import cifar
    from mobilenets.weights.io import save_checkpoint
    with pytest.raises(UsageError, match="--weights"):
        tiny(tmp_path, "x", normalize="weights")
    base, _ = load_checkpoint(fit(tiny(tmp_path, "base", epochs=1), reporter=Reporter(enabled=False)).run_dir
                              / "best.safetensors")
    odd = cifar(16, (0.25, 0.5, 0.75), (0.5, 0.25, 0.125))
    ckpt = save_checkpoint(tmp_path / "odd.safetensors", base, preprocessing=odd)
    result = fit(tiny(tmp_path, "ft", epochs=1, train_images=40, normalize="weights", weights=str(ckpt)),
                 reporter=Reporter(enabled=False))
    resolved = json.loads((result.run_dir / "config.json").read_text())["resolved"]
    assert resolved["data"]["train_images"] == 40
    assert tuple(resolved["preprocessing"]["mean"]) == odd.mean and tuple(resolved["preprocessing"]["std"]) == odd.std
    assert load_checkpoint(result.run_dir / "best.safetensors")[1].preprocessing.mean == odd.mean
    everything = json.loads((fit(tiny(tmp_path, "all", epochs=1), reporter=Reporter(enabled=False)).run_dir
                             / "config.json").read_text())["resolved"]["data"]
    assert everything["train_images"] == 128  # synthetic:128 trains on all 128


def test_val_every_validates_some_epochs_and_always_the_last(tmp_path):
    result = fit(tiny(tmp_path, epochs=5, val_every=3), reporter=Reporter(enabled=False))
    validated = [r["epoch"] for r in result.history if r["val_top1"] is not None]
    assert validated == [1, 3, 5] and result.history[1]["val_loss"] is None
    assert result.best_epoch in validated and result.last["val_top1"] is not None
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 6 and ",,," in rows[2]  # epoch 2: empty val cells
    assert (tmp_path / "run" / "curves.png").is_file()
    with pytest.raises(UsageError, match="--val-every must be >= 1, got 0"):
        tiny(tmp_path, val_every=0)


def test_time_budget_picks_the_epochs(tmp_path):
    cap = Capture()
    result = fit(tiny(tmp_path, epochs=1000, time_budget_min=0.1, resize_from=8), reporter=cap)  # probes 3 sizes
    epochs = json.loads((result.run_dir / "config.json").read_text())["epochs"]
    assert 1 <= epochs < 1000 and len(result.history) <= epochs
    assert any("time budget" in line for line in cap.lines)


def test_time_budget_shortens_the_schedule_when_the_machine_slows_down(tmp_path, monkeypatch):
    real = budget_module.epochs_that_fit

    def slower(done, *args, **kw):  # from epoch 4 on, the budget holds 6 epochs in all
        n = real(done, *args, **kw)
        return min(n, 6) if done >= 4 else n

    monkeypatch.setattr(budget_module, "epochs_that_fit", slower)
    cap = Capture()
    cfg = tiny(tmp_path, epochs=40, time_budget_min=30, val_every=4)
    result = fit(cfg, reporter=cap)
    assert cfg.epochs == 40  # the plan changed, the configuration did not
    assert len(result.history) == 6 and result.last["epochs"] == 6 and result.last["val_top1"] is not None
    assert result.last["lr"] < 0.02 * result.history[2]["lr"]  # the schedule ran to its end, not cut off
    assert "6 epochs instead of the 40 planned" in result.stopped
    assert json.loads((result.run_dir / "config.json").read_text())["epochs"] == 6


def test_time_budget_lengthens_the_schedule_again_when_the_machine_speeds_up(tmp_path, monkeypatch):
    real = budget_module.epochs_that_fit

    def slow_then_fast(done, *args, **kw):  # after epoch 4 the budget holds 7 epochs, from epoch 5 on 9
        n = real(done, *args, **kw)
        return n if done < 4 else min(n, 7 if done == 4 else 9)

    monkeypatch.setattr(budget_module, "epochs_that_fit", slow_then_fast)
    cap = Capture()
    result = fit(tiny(tmp_path, epochs=40, time_budget_min=30, val_every=4), reporter=cap)
    assert [r["epochs"] for r in result.history] == [40, 40, 40, 7, 9, 9, 9, 9, 9]
    assert result.last["lr"] < 0.02 * result.history[2]["lr"] and result.last["val_top1"] is not None
    assert "9 epochs instead of the 40 planned" in result.stopped
    assert any("9 epochs instead of 7" in line for line in cap.lines)


def test_a_resumed_run_may_grow_back_to_the_epochs_limit(tmp_path, monkeypatch):
    real = budget_module.epochs_that_fit
    holds = {"epochs": 5}  # what the budget holds in all, from epoch 3 on

    def budget(done, *args, **kw):
        n = real(done, *args, **kw)
        return n if done < 3 else min(n, holds["epochs"])

    monkeypatch.setattr(budget_module, "epochs_that_fit", budget)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny(tmp_path, epochs=40, time_budget_min=30), reporter=Interrupt(after=3))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["epochs"] == 5 and saved["resolved"]["epochs_limit"] == 40
    holds["epochs"] = 8  # the machine sped up while the run was down
    resumed = fit(resume=tmp_path / "run", reporter=Reporter(enabled=False))
    assert resumed.last["epoch"] == resumed.last["epochs"] == 8


def test_time_budget_grows_only_if_the_slowest_recent_pace_fits():
    """After epoch 6 of 10, the last three epochs took 98, 148 and 98 s (+2 s each for checkpoints):
    the plan shrinks at their median pace (100 s) and grows only as far as the slowest (150 s) allows."""
    def after_epoch_6(left_s: float, cost=None) -> int:
        budget = TimeBudget(60, limit=40, every=1, cost=cost, early_refits=False, planned=10)
        budget.measured = [(4, 98.0), (5, 148.0)]
        return budget.after_epoch(6, 10, 3600 - 30 - left_s, EpochTime(98.0, 100))

    for cost in (None, lambda e, n: 50.0):  # after --resume (measured times only), or scaling the probe's
        assert after_epoch_6(300, cost) == 6 + int(300 // 102)  # shrinks: 8 (the slowest pace: 7)
        assert after_epoch_6(1000, cost) == 6 + int(1000 // 153)  # grows: 12 (the median pace: 15)
        assert after_epoch_6(470, cost) == 10  # 4 more fit at the median pace, 3 at the slowest: unchanged


def test_time_budget_refits_the_epochs_from_measured_epoch_times():
    fit_ = dict(elapsed=100, deadline=600, limit=60)
    assert epochs_that_fit(2, train_s=50, val_s=0, every=1, **fit_) == 2 + 470 // 51
    assert epochs_that_fit(2, train_s=50, val_s=0, every=1, **{**fit_, "limit": 5}) == 5  # the upper limit holds
    assert epochs_that_fit(3, train_s=50, val_s=0, every=1, elapsed=590, deadline=600, limit=60) == 3  # out of time
    # validations cost time: 10 s each, every epoch -> 470 // 61; every 4th and the last -> one more epoch
    assert epochs_that_fit(2, train_s=50, val_s=10, every=1, **fit_) == 2 + 470 // 61
    assert epochs_that_fit(2, train_s=50, val_s=10, every=4, **fit_) == 2 + 470 // 61 + 1


def test_progressive_resizing_schedule_and_run(tmp_path):
    sizes = [train_resolution(e, 12, 32, 24, 0.5) for e in range(1, 13)]
    assert sizes == [24, 24, 24, 28, 28, 28] + [32] * 6
    assert {train_resolution(e, 12, 32, 0, 0.5) for e in range(1, 13)} == {32}  # off
    # cheaper early epochs fit more epochs into the same budget
    cost = lambda e, n: 20 if train_resolution(e, n, 32, 24, 0.5) < 32 else 40  # noqa: E731
    assert epochs_that_fit(0, 0, cost, 0, 1, 600, 100) > epochs_that_fit(0, 0, 40.0, 0, 1, 600, 100)
    est = epoch_cost({24: 10.0, 32: 20.0}, 32, 24, 0.5)
    assert [round(est(e, 12), 2) for e in (1, 4, 7)] == [10, round(10 + 10 * (28**2 - 24**2) / (32**2 - 24**2), 2), 20]
    result = fit(tiny(tmp_path, epochs=4, resize_from=8), reporter=Reporter(enabled=False))
    assert [r["train_size"] for r in result.history] == [8, 12, 16, 16]
    assert result.last["val_top1"] is not None
    with pytest.raises(UsageError, match=r"--resize-from must be 0 \(off\) or >= 8, got 4"):
        tiny(tmp_path, resize_from=4)


def test_validation_schedule():
    assert [e for e in range(1, 22) if validates(e, 21, 4)] == [1, 4, 8, 12, 16, 20, 21]
    assert all(validates(e, 7, 1) for e in range(1, 8))


def test_flip_modes_and_earlier_run_directories():
    assert TrainConfig.from_dict({"flip": True}).flip == "random"  # config.json of earlier versions
    assert TrainConfig.from_dict({"flip": False}).flip == "none"
    assert resolve_config(flip="alternate").flip == "alternate"
    with pytest.raises(UsageError, match="--flip must be one of none, random, alternate"):
        resolve_config(flip="sometimes")
    with pytest.raises(UsageError, match="dropout must be in"):
        resolve_config(dropout=1.5)
    assert resolve_config("cifar10_60min", time_budget_min=0, epochs=5).time_budget_min == 0  # a preset, unbudgeted
    with pytest.raises(UsageError, match="--time-budget-min must be >= 0, got -1"):
        resolve_config(time_budget_min=-1)
    result = CliRunner().invoke(app, ["train", "mobilenet_v3_small", "--data", "synthetic", "--flip", "sideways"])
    assert result.exit_code == 2 and "flip must be" in result.output


def test_weight_decay_groups_and_zero_init_residual():
    from mobilenets import create_model
    from mobilenets.train.model import zero_init_residual
    from mobilenets.train.optim import param_groups
    model = create_model("mobilenet_v2", width=0.25, num_classes=10)
    depthwise = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    pointwise = model.classifier.weight if hasattr(model, "classifier") else None
    ids = lambda group: {id(p) for p in group["params"]}  # noqa: E731
    decay, free = param_groups(model, 5e-4, True)
    assert all(id(w) in ids(decay) for w in depthwise) and all(p.ndim <= 1 for p in free["params"])
    decay, free = param_groups(model, 5e-4, True, no_decay_depthwise=True)
    assert all(id(w) in ids(free) and id(w) not in ids(decay) for w in depthwise)
    assert all(p.ndim > 1 for p in decay["params"]) and (pointwise is None or id(pointwise) in ids(decay))
    assert len(ids(decay)) + len(ids(free)) == len(list(model.parameters()))
    decay, free = param_groups(model, 5e-4, False, no_decay_depthwise=True)  # BN and biases decay then
    assert any(p.ndim == 1 for p in decay["params"])
    assert all(id(p) in {id(w) for w in depthwise} for p in free["params"])

    blocks = [b for b in model.modules() if getattr(b, "residual_channels", 0)]
    assert zero_init_residual(model) == len(blocks) == 11  # V2 0.25: these blocks keep their shape
    model.eval()
    for b in blocks:  # each residual block starts as the identity
        x = torch.randn(2, b.residual_channels, 8, 8)
        assert torch.equal(b(x), x)
        assert b.project.bn.weight.abs().sum() == 0 and b.dw.bn.weight.abs().sum() > 0


def test_zero_init_residual_and_no_decay_depthwise_in_a_run(tmp_path):
    result = fit(tiny(tmp_path, epochs=1, zero_init_residual=True, no_decay_depthwise=True),
                 reporter=Reporter(enabled=False))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["zero_init_residual"] is True and saved["no_decay_depthwise"] is True
    assert np.isfinite(result.history[-1]["train_loss"])
    args = ["train", "mobilenet_v3_small", "--data", "synthetic:64", "--width", "0.25", "--resolution", "16",
            "--cifar-stem", "--batch-size", "32", "--epochs", "1", "--threads", "1", "-o", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, [*args, "--zero-init-residual", "--no-decay-depthwise"])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert saved["zero_init_residual"] is True and saved["no_decay_depthwise"] is True


def test_bf16_pointwise_in_a_run_is_recorded_and_skipped_without_bf16(tmp_path, monkeypatch):
    import mobilenets.core.hardware as hardware
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    fit(tiny(tmp_path, "on", epochs=1, bf16=False, bf16_pointwise=True), reporter=Reporter(enabled=False))
    saved = json.loads((tmp_path / "on" / "config.json").read_text())
    assert saved["bf16_pointwise"] is True and saved["resolved"]["bf16_pointwise_layers"] > 0
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    logs = []
    reporter = Reporter(enabled=False)
    reporter.log = logs.append
    fit(tiny(tmp_path, "off", epochs=1, bf16=False, bf16_pointwise=True), reporter=reporter)
    saved = json.loads((tmp_path / "off" / "config.json").read_text())
    assert saved["resolved"]["bf16_pointwise_layers"] == 0
    assert any("1x1 convolutions stay fp32" in line for line in logs)
    args = ["train", "mobilenet_v3_small", "--data", "synthetic:64", "--width", "0.25", "--resolution", "16",
            "--cifar-stem", "--batch-size", "32", "--epochs", "1", "--threads", "1", "-o", str(tmp_path / "cli")]
    result = CliRunner().invoke(app, [*args, "--bf16-pointwise"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["bf16_pointwise"] is True


def test_compile_without_a_cxx_compiler_is_a_usage_error(tmp_path, monkeypatch):
    from torch._inductor import config as inductor_config  # $CXX is read into it at import time
    monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-compiler")))
    with pytest.raises(UsageError, match="needs a C.. compiler.*--no-compile"):
        fit(tiny(tmp_path, epochs=1, compile=True), reporter=Reporter(enabled=False))
    assert not (tmp_path / "run").exists()  # refused before any data or run directory


def test_compile_wraps_the_training_model_only(tmp_path, monkeypatch):
    import mobilenets.train.speedups as speedups
    compiled, real_compile = [], torch.compile

    def fake_compile(net):  # aot_eager: the same tracing, no C++ build (seconds instead of minutes)
        compiled.append(net)
        return real_compile(net, backend="aot_eager")
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(speedups, "cxx_compiler", lambda: "c++")  # aot_eager builds nothing: no compiler needed
    logs = []
    reporter = Reporter(enabled=False)
    reporter.log = logs.append
    result = fit(tiny(tmp_path, epochs=1, compile=True), reporter=reporter)
    assert len(compiled) == 1 and result.history[0]["val_top1"] is not None
    assert any("compiled" in line for line in logs)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["compile"] is True
    load_checkpoint(result.run_dir / "last.safetensors")  # strict: no "_orig_mod." prefixes


def test_wrap_compiles_inside_ddp_with_one_graph_on_cpu(monkeypatch):
    """Compiled inside DDP; on CPU, Dynamo's optimize_ddp (a graph split at each gradient bucket) is off."""
    from mobilenets.train import distributed as D
    monkeypatch.setattr(torch, "compile", lambda net: ("compiled", net))
    monkeypatch.setattr(torch.nn.parallel, "DistributedDataParallel", lambda net, device_ids: ("ddp", net, device_ids))
    model = torch.nn.Linear(2, 2)
    before = torch._dynamo.config.optimize_ddp
    # config.patch restores it; monkeypatch's undo left the option hidden ("optimize_ddp does not exist")
    with torch._dynamo.config.patch(optimize_ddp=True):
        assert D.wrap(model, D.Context(), compile=False) is model
        assert D.wrap(model, D.Context(), compile=True) == ("compiled", model)
        assert torch._dynamo.config.optimize_ddp is True  # one process: nothing to split
        assert D.wrap(model, D.Context(0, 2, 0, torch.device("cuda", 0)), compile=True) == (
            "ddp", ("compiled", model), [0])
        assert torch._dynamo.config.optimize_ddp is True  # GPUs keep the all-reduce overlapped with backward
        assert D.wrap(model, D.Context(1, 2), compile=False) == ("ddp", model, None)
        assert torch._dynamo.config.optimize_ddp is True
        assert D.wrap(model, D.Context(1, 2), compile=True) == ("ddp", ("compiled", model), None)
        assert torch._dynamo.config.optimize_ddp is False
    assert torch._dynamo.config.optimize_ddp == before


def _step_of(net, micro, ddp=False):
    """Parameters after one SGD step of ``net`` on a fixed batch of 8, in micro-batches of ``micro``."""
    net = copy.deepcopy(net)
    model = torch.nn.parallel.DistributedDataParallel(net) if ddp else net
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 4, (8,), generator=g)
    logits, loss = train_step(model, opt, x, y, resolve_config(micro_batch=micro, label_smoothing=0.1), False)
    assert logits.shape == (8, 4) and loss.ndim == 0
    return loss.item(), [p.detach().clone() for p in net.parameters()]


def test_micro_batches_sum_to_the_step_of_the_whole_batch():
    """Without BatchNorm, parts of 2 or 4 images give the whole batch's loss and step (through DDP's
    no_sync as well: one all-reduce, of the summed gradients)."""
    import torch.distributed as dist
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(80, 4))
    loss, whole = _step_of(net, 0)
    assert any(not torch.equal(a, b) for a, b in zip(whole, net.parameters(), strict=True))  # it stepped
    for micro in (2, 4):
        part_loss, parts = _step_of(net, micro)
        assert part_loss == pytest.approx(loss, rel=1e-5)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, parts, strict=True))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        _, synced = _step_of(net, 2, ddp=True)
    finally:
        dist.destroy_process_group()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, synced, strict=True))
    with pytest.raises(UsageError, match="micro-batch 5 does not divide the batch size 32"):
        resolve_config(batch_size=32, micro_batch=5)


def test_micro_batches_in_a_run(tmp_path):
    result = fit(tiny(tmp_path, epochs=1, micro_batch=8), reporter=Reporter(enabled=False))
    assert json.loads((result.run_dir / "config.json").read_text())["micro_batch"] == 8
    assert result.last["val_top1"] is not None and np.isfinite(result.last["train_loss"])


def test_schedules():
    step = resolve_config(schedule="step", step_milestones="0.5,0.75", warmup_epochs=0)  # fractions of the run
    lrs = [learning_rate(step, s, 40, 10) for s in range(40)]
    assert lrs[0] == 0.1 and lrs[19] == 0.1 and lrs[20] == pytest.approx(0.01) and lrs[39] == pytest.approx(0.001)
    cos = resolve_config("default", warmup_epochs=1)
    assert learning_rate(cos, 0, 100, 10) == pytest.approx(0.01)
    assert learning_rate(cos, 9, 100, 10) == pytest.approx(0.1)
    assert learning_rate(cos, 99, 100, 10) < 1e-3
    one = resolve_config("cifar10_60min")
    assert learning_rate(one, 0, 1000, 10) == pytest.approx(one.lr / 25)
    assert learning_rate(one, 999, 1000, 10) < one.lr / 1000
    with pytest.raises(UsageError, match="unknown recipe"):
        resolve_config("fastest")
    with pytest.raises(UsageError, match="schedule"):
        resolve_config(schedule="exp")


def test_step_milestones_are_fractions_below_1_and_epochs_from_1():
    from mobilenets.train.schedule import lr_at
    lr = [lr_at(s, 100, lr=1.0, schedule="step", milestones=(2, 0.75), gamma=0.5, steps_per_epoch=10)
          for s in range(100)]
    assert lr[19] == 1.0 and lr[20] == 0.5 and lr[74] == 0.5 and lr[75] == 0.25  # after epoch 2; at 75% of the run
    with pytest.raises(ValueError, match="steps_per_epoch"):
        lr_at(0, 100, lr=1.0, schedule="step", milestones=(2,))


def test_baseline_is_the_seed_recipe(tmp_path):
    """The PyTorch MobileNetV3 seed's train.py: SGD(lr 0.1, momentum 0.9), MultiStepLR([15, 20, 30],
    gamma 0.1) stepped per epoch, 20 epochs of 128, RandomCrop(32, padding=4) + flips, CIFAR-100
    mean/std, no weight decay, label smoothing, EMA or dropout change; MobileNetV3-Small with stride 1
    in its first layers."""
    from mobilenets import create_model
    from mobilenets.core.preprocessing import CIFAR100_MEAN, CIFAR100_STD
    cfg = resolve_config("baseline")
    seed = dict(model="mobilenet_v3_small", width=None, cifar_stem=3, dropout=None, optimizer="sgd", lr=0.1,
                momentum=0.9, nesterov=False, weight_decay=0.0, epochs=20, batch_size=128, schedule="step",
                warmup_epochs=0, step_milestones=(15, 20, 30), step_gamma=0.1, pad_crop=4, flip="random", cutout=0,
                policy=None, label_smoothing=0.0, ema_decay=0.0, normalize="cifar100", channels_last=False,
                bf16=False, bf16_pointwise=False, compile=False, val_every=1, tta="none")
    assert {k: getattr(cfg, k) for k in seed} == seed
    spe, p = 7, torch.nn.Parameter(torch.zeros(1))
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(sgd, milestones=[15, 20, 30], gamma=0.1)
    want = []
    for _ in range(20):
        want += [sgd.param_groups[0]["lr"]] * spe
        sgd.step()
        scheduler.step()
    assert [learning_rate(cfg, s, 20 * spe, spe) for s in range(20 * spe)] == pytest.approx(want)
    opt = build_optimizer(create_model("mobilenet_v3_small", width=0.25, num_classes=100, cifar_stem=3), cfg)
    assert [(g["weight_decay"], g["momentum"], g["nesterov"]) for g in opt.param_groups] == [(0.0, 0.9, False)]
    result = fit(tiny(tmp_path, recipe="baseline", epochs=1), reporter=Reporter(enabled=False))
    _, meta = load_checkpoint(result.run_dir / "best.safetensors")
    assert meta.preprocessing.mean == CIFAR100_MEAN and meta.preprocessing.std == CIFAR100_STD  # on any data


def test_cli_train_and_eval(tmp_path):
    out = tmp_path / "cli"
    args = ["train", "mobilenet_v3_small", "--data", "synthetic:64", "--width", "0.25", "--cifar-stem",
            "--resolution", "16", "--epochs", "1", "--batch-size", "32", "--threads", "1", "--output", str(out),
            "--recipe", "baseline"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best top-1" in result.stdout and (out / "best.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["cifar_stem"] == 3  # --cifar-stem: --stem-layers 3
    ev = runner.invoke(app, ["eval", "mobilenet_v3_small", "--weights", str(out / "best.safetensors"),
                             "--data", "synthetic:64", "--json"])
    assert ev.exit_code == 0, ev.output
    data = json.loads(ev.stdout)
    assert {"top1", "top5", "loss", "images"} <= set(data) and data["preprocessing"]["kind"] == "cifar"
    ev = runner.invoke(app, ["eval", str(out / "best.safetensors"), "--data", "synthetic:64", "--tta", "mirror-shift"])
    assert ev.exit_code == 0 and "mirror-shift TTA" in ev.stdout and "single view" in ev.stdout, ev.output
    ev = runner.invoke(app, ["eval", str(out / "best.safetensors"), "--data", "synthetic:64", "--tta", "mirror-x"])
    assert ev.exit_code == 2 and "tta must be" in ev.output
    again = runner.invoke(app, args)  # the run directory is taken
    assert again.exit_code == 2 and "--resume" in again.output
    for bad, needle in ((["--data", f"folder:{tmp_path / 'none'}"], "no such directory"),
                        (["--data", "imagenet:x"], "--data must be"), (["--data", "synthetic", "--recipe", "x"],
                                                                         "unknown recipe"),
                        (["--data", "synthetic", "--micro-batch", "5"], "does not divide the batch size 128")):
        r = runner.invoke(app, ["train", "mobilenet_v3_small", *bad, "--output", str(tmp_path / "bad")])
        assert r.exit_code == 2 and needle in r.output, r.output
    r = runner.invoke(app, ["eval", "mobilenet_v3_small", "--weights", str(tmp_path / "no.safetensors"),
                            "--data", "synthetic"])
    assert r.exit_code == 2 and "no such checkpoint" in r.output


def test_resume_of_a_damaged_or_missing_run_config_is_a_one_line_error(tmp_path):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for text in ('{"model": "mobilenet_v3_sm', "[1, 2]", '{"epochs": "two", "batch_size": []}'):
        (damaged / "config.json").write_text(text)
        r = runner.invoke(app, ["train", "--resume", str(damaged)])
        assert r.exit_code == 2 and "is not a readable run config" in r.output, r.output
    r = runner.invoke(app, ["train", "--resume", str(tmp_path / "none")])
    assert r.exit_code == 2 and "is not a run directory" in r.output, r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg_dict, queue):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    result = fit(TrainConfig.from_dict(cfg_dict), reporter=Reporter(enabled=False))
    queue.put((rank, result.history[-1]["val_top1"], result.history[-1]["train_loss"]))


def run_ddp(cfg: TrainConfig, timeout: float = 120) -> list[tuple]:
    """``fit(cfg)`` in two spawned DDP processes (gloo on a free loopback port): each rank's
    (rank, last val top-1, last train loss), sorted by rank."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, cfg.to_dict(), queue)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
        assert p.exitcode == 0
    return sorted(queue.get() for _ in range(2))


def test_distributed_two_processes_on_cpu(tmp_path):
    results = run_ddp(tiny(tmp_path, "ddp", epochs=1, device="cpu"))
    assert results[0][1:] == results[1][1:]  # metrics are all-reduced: every rank reports the same
    run = tmp_path / "ddp"
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["world_size"] == 2 and (run / "best.safetensors").is_file()
    steps = json.loads((run / "metrics.json").read_text())
    assert len(steps) == 1


def assert_same_run(run, reference, epochs):
    """Equal metrics (timings aside) and equal final weights."""
    drop = ("epoch_time_s", "elapsed_s", "images_per_s")
    rows = lambda d: [{k: v for k, v in r.items() if k not in drop}  # noqa: E731
                      for r in json.loads((d / "metrics.json").read_text())]
    assert rows(run) == rows(reference) and len(rows(run)) == epochs
    a = load_checkpoint(reference / "last.safetensors")[0].state_dict()
    b = load_checkpoint(run / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real SIGKILL in the middle of a run (a separate process), then `--resume`."""
    import signal
    import subprocess
    import sys
    import time
    args = [sys.executable, "-m", "mobilenets", "train", "mobilenet_v3_small", "--data", "synthetic:384",
            "--width", "0.25", "--stem-layers", "3", "--resolution", "16", "--batch-size", "32", "--threads", "1",
            "--epochs", "4", "--seed", "3"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*args, "--output", str(tmp_path / "whole")], env=env, capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*args, "--output", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (cut / "metrics.json").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(json.loads((cut / "metrics.json").read_text()))
    assert 1 <= done < 4, "the kill should land mid-run"
    resumed = subprocess.run([sys.executable, "-m", "mobilenets", "train", "--resume", str(cut)], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(cut, tmp_path / "whole", epochs=4)


def _why(stderr: str) -> str:
    """A failed torchrun's stderr, cut for an assertion message: the lines where a worker says why it
    died (a C++ abort's "terminate called ...", exceptions, errors), then the launcher's summary."""
    causes = [line for line in stderr.splitlines()
              if any(k in line for k in ("terminate", "Error", "Exception", "error:", "what()"))]
    return "\n".join(causes[:20]) + "\n...\n" + stderr[-1500:]


def test_kill_9_under_torchrun_then_resume_matches_an_uninterrupted_run(tmp_path):
    """Two DDP processes under torchrun, both SIGKILLed mid-run, then resumed under torchrun."""
    import signal
    import subprocess
    import sys
    import time
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
              "mobilenets", "train"]
    args = ["mobilenet_v3_small", "--data", "synthetic:256", "--width", "0.25", "--stem-layers", "3",
            "--resolution", "16", "--batch-size", "32", "--threads", "1", "--epochs", "3", "--seed", "5",
            "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = subprocess.run([*launch, *args, "--output", str(tmp_path / "whole")], env=env, capture_output=True,
                           text=True, timeout=300)
    assert whole.returncode == 0, _why(whole.stderr)
    cut = tmp_path / "cut"
    proc = subprocess.Popen([*launch, *args, "--output", str(cut)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 180
    while not (cut / "metrics.json").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    done = len(json.loads((cut / "metrics.json").read_text()))
    assert 1 <= done < 3, "the kill should land mid-run"
    resumed = subprocess.run([*launch, "--resume", str(cut)], env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, _why(resumed.stderr)
    assert_same_run(cut, tmp_path / "whole", epochs=3)


# ------------------------------------------------------------------ the configuration and its checks

def one_line_error(result, *needles: str) -> str:
    """The CLI refused with exit code 2 and one line naming the problem, no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert all(n in lines[0] for n in needles), result.output
    return lines[0]


def test_every_option_is_one_field_with_its_metadata():
    """Each field of TrainConfig carries its help and group, and is an option of `train` with that help."""
    import dataclasses

    import typer

    from mobilenets.train.config import GROUPS, OPTIONS, flag
    command = typer.main.get_command(app).commands["train"]
    params = {p.name: p for p in command.params}
    for f in dataclasses.fields(TrainConfig):
        opt = OPTIONS[f.name]
        assert opt.help and (opt.group in GROUPS or f.name == "recipe"), f.name
        param = params[f.name]
        assert opt.help.split("(")[0].strip() in " ".join(param.help.split()), f.name
        if not opt.argument:
            assert flag(f.name) in param.opts, f.name
    assert params["cifar_stem__shortcut"].opts == ["--cifar-stem"] and params["cifar_stem"].opts == ["--stem-layers"]


def test_every_recipe_is_a_valid_config_and_config_json_round_trips():
    from mobilenets.train.config import OPTIONS
    from mobilenets.train.recipes import RECIPES
    from mobilenets.train.rundir import finite
    for name, preset in RECIPES.items():
        assert set(preset) <= set(OPTIONS), name
        cfg = resolve_config(name)
        text = json.dumps(finite(cfg.to_dict()), allow_nan=False)
        assert TrainConfig.from_dict(json.loads(text)) == cfg
    # config.json of earlier versions: flags for TTA and flips, a bool CIFAR stem, bf16 as true/false
    old = TrainConfig.from_dict({"tta": True, "flip": False, "cifar_stem": True, "bf16": False, "gone": 1})
    assert (old.tta, old.flip, old.cifar_stem, old.bf16) == ("mirror", "none", 3, False)
    assert TrainConfig.from_dict({"cifar_stem": 1}).cifar_stem == 1  # 1 is a count of layers, not True


@pytest.mark.parametrize("option,value,message", [
    ("lr", float("inf"), "--lr must be a finite number, got inf"),
    ("lr", float("nan"), "--lr must be a finite number, got nan"),
    ("momentum", float("-inf"), "--momentum must be a finite number"),
    ("width", 1e6, "--width must be in (0, 4], got 1000000.0"),
    ("width", float("inf"), "--width must be a finite number"),
    ("epochs", "two", "--epochs must be an integer, got 'two'"),
    ("step_milestones", "15,x", "--step-milestones takes numbers separated by commas"),
    ("step_milestones", "0.5,-1", "--step-milestones must be > 0, got -1.0"),
    ("bf16", "maybe", "--bf16 must be one of auto, on, off, got 'maybe'"),
    ("model", "mobilenet_v9", "unknown model 'mobilenet_v9'"),
])
def test_bad_values_are_refused_by_the_config(option, value, message):
    with pytest.raises(UsageError) as err:
        resolve_config(**{option: value})
    assert message in str(err.value)


@pytest.mark.parametrize("args,needle", [
    (["--lr", "inf"], "--lr must be a finite number, got inf"),
    (["--lr", "nan"], "--lr must be a finite number, got nan"),
    (["--label-smoothing", "nan"], "--label-smoothing must be a finite number"),
    (["--width", "inf"], "--width must be a finite number"),
    (["--width", "1e6"], "--width must be in (0, 4]"),
    (["--device", "gpu9"], "unknown device 'gpu9'"),
    (["--cifar-stem", "--stem-layers", "2"], "--cifar-stem means --stem-layers 3"),
    (["--weights", "/no/such/best.safetensors"], "no such checkpoint: /no/such/best.safetensors"),
])
def test_cli_refuses_bad_options_in_one_line_before_any_work(tmp_path, args, needle):
    """The data folder does not exist: a check that came after loading the data would say so instead."""
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "mobilenet_v3_small", "--data", f"folder:{tmp_path / 'none'}", *args, "-o",
                            str(out)])
    one_line_error(r, needle)
    assert not out.exists()


def test_cli_checks_the_model_name_and_the_output_before_the_data(tmp_path):
    missing = f"folder:{tmp_path / 'none'}"
    one_line_error(runner.invoke(app, ["train", "mobilenet_v9", "--data", missing]), "unknown model 'mobilenet_v9'")
    taken = tmp_path / "file.txt"
    taken.write_text("not a folder")
    for out in (taken, taken / "run"):
        one_line_error(runner.invoke(app, ["train", "mobilenet_v3_small", "--data", missing, "-o", str(out)]),
                       f"{taken} is a file")
    assert taken.read_text() == "not a folder"
    one_line_error(runner.invoke(app, ["train", "--resume", str(tmp_path), "--epochs", "3"]), "drop --epochs")
    one_line_error(runner.invoke(app, ["train", "mobilenet_v3_small"]), "give MODEL and --data")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_refuses_cuda_on_a_machine_without_it(tmp_path):
    for device in ("cuda", "cuda:1"):
        r = runner.invoke(app, ["train", "mobilenet_v3_small", "--data", f"folder:{tmp_path / 'none'}", "--device",
                                device])
        one_line_error(r, f"--device {device}: this machine has no CUDA GPU")
    r = runner.invoke(app, ["eval", str(tmp_path / "x.safetensors"), "--data", "synthetic", "--device", "cuda"])
    one_line_error(r, "no CUDA GPU")


def test_train_help_shows_each_recipes_defaults():
    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.replace("│", " ").split())
    assert "[default: 0.1 (recipe default); cifar10_60min: 0.2]" in text  # --lr
    assert "[default: 0.5,0.75 (recipe default); baseline: 15,20,30]" in text  # --step-milestones
    assert "[default: --channels-last (recipe default); baseline: --nchw]" in text
    assert "[default: auto]" in text and "[required]" in text  # --device as every verb; --data


def test_run_files_are_strict_json(tmp_path):
    from mobilenets.train.rundir import write_metrics
    row = {"epoch": 1, "epochs": 1, "lr": 0.1, "train_loss": float("nan"), "train_top1": 10.0,
           "val_loss": float("inf"), "val_top1": None, "val_top5": None, "images_per_s": 1.0, "epoch_time_s": 1.0,
           "elapsed_s": 1.0}
    write_metrics(tmp_path, [row])

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in a run file"))
    assert strict((tmp_path / "metrics.json").read_text())[0]["train_loss"] is None
    assert (tmp_path / "metrics.csv").read_text().splitlines()[1].startswith("1,1,0.1,,10,,")
    result = fit(tiny(tmp_path, "run", epochs=1), reporter=Reporter(enabled=False))
    for name in ("config.json", "metrics.json", "summary.json"):
        strict((result.run_dir / name).read_text())


# ----------------------------------------------------------------------- the time budget's pace

def test_an_epoch_that_compiled_counts_at_the_pace_of_its_other_steps():
    first = EpochTime(train_s=278.0, steps=351, warm_s=158.3, warm_steps=1)  # torch.compile in its first step
    assert first.steady_s == pytest.approx((278.0 - 158.3) * 351 / 350)
    assert EpochTime(120.0, 351).steady_s == 120.0 and EpochTime(5.0, 1, 4.0, 1).steady_s == 5.0


def test_the_budget_plans_from_steady_state_epochs_not_from_compilation():
    """The probe says 120 s an epoch; epoch 1 takes 278 s, 158 s of it compiling in its first step. The
    plan after epoch 1 stays where steady epochs put it, instead of shrinking to a fraction."""
    def after_first(took: EpochTime) -> tuple[int, int]:
        budget = TimeBudget(59, limit=60, every=8, cost=lambda e, n: 120.0, val_s=10.0)
        planned = budget.plan(elapsed=60.0)
        return planned, budget.after_epoch(1, planned, 60.0 + took.train_s, took)

    planned, steady = after_first(EpochTime(120.0, 351))
    _, compiled = after_first(EpochTime(278.0, 351, warm_s=158.3, warm_steps=1))
    _, counted = after_first(EpochTime(278.0, 351))  # compilation taken as the pace of every epoch
    assert planned == 27 and steady == 27 and compiled == 26  # the 158 s are spent once, not every epoch
    assert counted == 12


def test_the_loop_tells_the_budget_which_steps_compiled(tmp_path, monkeypatch):
    """The first step at each input size sets up (with --compile: compiles) the kernels for it; the loop
    reports those steps apart. Progressive resizing: 8, 12, 16 then 16 px."""
    seen = []
    real = TimeBudget.after_epoch

    def record(self, epoch, epochs, elapsed, took):
        seen.append(took)
        return real(self, epoch, epochs, elapsed, took)

    monkeypatch.setattr(TimeBudget, "after_epoch", record)
    result = fit(tiny(tmp_path, epochs=4, resize_from=8, time_budget_min=30), reporter=Reporter(enabled=False))
    assert [r["train_size"] for r in result.history] == [8, 12, 16, 16]
    assert [t.warm_steps for t in seen] == [1, 1, 1, 0] and all(t.steps == 4 for t in seen)
    assert all(0 < t.warm_s < t.train_s for t in seen[:3])


# ------------------------------------------------------------------------------------- evaluation

def test_eval_takes_a_run_directory_a_checkpoint_or_an_export(tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilenets.deploy.export import export
    result = fit(tiny(tmp_path, epochs=1), reporter=Reporter(enabled=False))
    run = result.run_dir
    by_run = evaluate_target(run, "synthetic:128")
    by_file = evaluate_target(run / "best.safetensors", "synthetic:128")
    by_name = evaluate_target("mobilenet_v3_small", "synthetic:128", weights=run / "best.safetensors")
    assert by_run["kind"] == "run" and by_file["kind"] == by_name["kind"] == "checkpoint"
    assert by_run["top1"] == by_file["top1"] == by_name["top1"] == pytest.approx(result.last["val_top1"])
    onnx = export(run / "best.safetensors", "onnx", tmp_path / "model.onnx").path
    by_export = evaluate_target(onnx, "synthetic:128", tta="mirror")
    assert by_export["kind"] == "export" and by_export["images"] == by_file["images"]
    assert by_export["top1_single"] == pytest.approx(by_file["top1"])
    assert by_export["preprocessing"] == by_file["preprocessing"]
    r = runner.invoke(app, ["eval", str(onnx), "--data", "synthetic:128", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["loss"] == pytest.approx(by_file["loss"], rel=1e-4)
    r = runner.invoke(app, ["eval", str(run), "--data", "synthetic:128"])
    assert r.exit_code == 0 and "best.safetensors" in "".join(r.stdout.split()), r.output  # rich wraps long paths
    onnx.with_suffix(".json").unlink()  # without its sidecar: the input size comes from the graph
    bare = evaluate_target(onnx, "synthetic:128", val_size="none")
    assert bare["preprocessing"]["resolution"] == by_file["preprocessing"]["resolution"] and bare["images"] > 0


def test_eval_refuses_bad_input(tmp_path):
    r = runner.invoke(app, ["eval", str(tmp_path / "x.safetensors"), "--data", "synthetic", "--batch-size", "0"])
    assert r.exit_code == 2 and "--batch-size" in r.output and "Traceback" not in r.output, r.output
    one_line_error(runner.invoke(app, ["eval", "mobilenet_v3_small", "--data", "synthetic"]),
                   "is a model name: give its checkpoint")
    one_line_error(runner.invoke(app, ["eval", str(tmp_path / "x.safetensors"), "--data", "synthetic",
                                       "--val-size", "lots"]), "--val-size must be a count, a fraction < 1 or none")
    with pytest.raises(UsageError, match="batch-size must be >= 1"):
        evaluate_target(tmp_path, "synthetic", batch_size=0)


def test_eval_val_size_none_scores_all_of_train(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / "train" / c).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(
                tmp_path / "imgs" / "train" / c / f"{i}.png")
    data = f"folder:{tmp_path / 'imgs'}"
    result = fit(tiny(tmp_path, epochs=1, data=data, val_size=4, batch_size=8), reporter=Reporter(enabled=False))
    for args, images in (([], 4), (["--val-size", "none"], 20), (["--val-size", "6"], 6), (["--val-size", "0.5"], 10)):
        r = runner.invoke(app, ["eval", str(result.run_dir), "--data", data, "--json", *args])
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["images"] == images, args


def test_cli_words_map_to_config_values(tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["train", "mobilenet_v3_small", "--data", "synthetic:64", "--width", "0.25", "--stem-layers",
                            "2", "--resolution", "16", "--epochs", "1", "-b", "32", "--threads", "1", "--bf16", "off",
                            "--policy", "none", "--schedule", "step", "--step-milestones", "1,0.5", "--no-nesterov",
                            "--nchw", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["bf16"], saved["policy"], saved["step_milestones"], saved["cifar_stem"], saved["batch_size"]) == (
        False, None, [1.0, 0.5], 2, 32)
    assert (saved["nesterov"], saved["channels_last"]) == (False, False)
    assert json.loads(r.stdout)["last"]["epoch"] == 1
