"""The command line: tables, JSON, and one-line errors with exit code 2."""
import json

from typer.testing import CliRunner

from mobilenets.cli import app

runner = CliRunner()


def test_list_prints_every_variant_with_figures():
    result = runner.invoke(app, ["list", "mobilenet_v1_*", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert len(rows) == 16 and {"macs_m", "params_m", "top1"} <= set(rows[0])
    table = runner.invoke(app, ["list"])
    assert table.exit_code == 0 and "mobilenext_140" in table.stdout and "569" in table.stdout


def test_profile_table_and_json():
    result = runner.invoke(app, ["profile", "mobilenet_v3_small", "--cifar-stem", "--resolution", "32"])
    assert result.exit_code == 0, result.output
    assert "pre_logits" in result.stdout and "peak activation memory" in result.stdout
    data = json.loads(runner.invoke(app, ["profile", "mobilenet_v2", "--width", "0.5", "--json"]).stdout)
    assert 95e6 < data["macs"] < 100e6 and data["layers"][0]["name"] == "stem.conv"


def test_profile_backbone_stages_and_task_parts():
    result = runner.invoke(app, ["profile", "mobilenet_v3_small", "--features", "--output-stride", "16"])
    assert result.exit_code == 0, result.output
    assert "stage 4 (to head)" in result.stdout and "576x14x14" in result.stdout and "classifier" not in result.stdout
    data = json.loads(runner.invoke(app, ["profile", "mobilenet_v2", "--width", "0.35", "--task", "lraspp",
                                          "--num-classes", "3", "--json"]).stdout)
    assert data["resolution"] == 520 and [p["name"] for p in data["parts"]][:2] == ["backbone", "backbone.stem"]
    assert data["parts"][-1]["name"] == "classifier" and data["parts"][-1]["params"] > 0
    _one_line_error(["profile", "mobilenet_v2", "--task", "yolo"], "unknown task 'yolo'")
    _one_line_error(["profile", "mobilenet_v2", "--task", "ssdlite320", "--resolution", "300"], "sets its own input")
    _one_line_error(["profile", "mobilenet_v2", "--output-stride", "4"], "output_stride must be one of")


def _one_line_error(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1 and needle in err and "Traceback" not in result.output


def test_bad_input_gets_one_line_and_exit_2():
    _one_line_error(["profile", "mobilenet_v3_lage"], "did you mean mobilenet_v3_large")
    _one_line_error(["profile", "mobilenet_v2", "--width", "0"], "width must be > 0")
    _one_line_error(["profile", "mobilenet_v2", "--resolution", "20"], "too small")
    _one_line_error(["profile", "mobilenet_v2", "--num-classes", "0"], "num_classes")


def test_click_parameter_errors_are_one_line_too():
    _one_line_error(["list", "--bogus"], "No such option: --bogus")
    _one_line_error(["eval", "runs/x", "--batch-size", "0"], "--batch-size")
    _one_line_error(["profile"], "Missing argument")


def test_unknown_errors_are_one_line_with_exit_1_and_debug_shows_the_traceback(monkeypatch):
    import mobilenets.cli.zoo as zoo

    def boom(*a, **k):
        raise RuntimeError("kaboom\nsecond line")

    monkeypatch.setattr(zoo, "profile_model", boom)
    result = runner.invoke(app, ["profile", "mobilenet_v2"])
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "RuntimeError: kaboom second line" in result.stderr and "--debug" in result.stderr
    debug = runner.invoke(app, ["--debug", "profile", "mobilenet_v2"])
    assert debug.exit_code == 1 and isinstance(debug.exception, RuntimeError)


VERBS = ["list", "profile", "convert", "predict", "train", "eval", "export", "bench", "zoo", "select"]


def _options(verb: str) -> dict[str, object]:
    """{flag: click option} of a verb, read from the command tree typer builds."""
    import typer.main

    command = typer.main.get_command(app).commands[verb]
    return {name: p for p in command.params for name in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}


def test_every_verb_speaks_one_vocabulary():
    """-o/--output for files, --batch-size for batches, --json a flag, one --device default."""
    devices = set()
    for verb in VERBS:
        opts = _options(verb)
        for alias, word in (("--batch", "--batch-size"), ("--to", "--output"), ("--out", "--output")):
            if alias in opts:  # an old spelling may stay as an alias of the common word, or hidden
                assert opts[alias] is opts.get(word) or opts[alias].hidden, f"{verb} says {alias}; use {word}"
        if "--json" in opts:
            assert opts["--json"].is_flag, f"{verb} --json takes a value; --json is a flag, files go to -o"
        if "--output" in opts:
            assert "-o" in opts["--output"].opts, f"{verb} --output lacks -o"
        if "--device" in opts:
            device = opts["--device"]  # train's options default to None: "the recipe's value", shown in help
            devices.add(device.default if device.default is not None or "default: auto" not in device.help
                        else "auto")
    assert devices <= {"auto"}, f"--device defaults differ between verbs: {devices}"


def test_list_patterns_from_its_own_help():
    result = runner.invoke(app, ["list", "v3*", "--json"])
    assert result.exit_code == 0, result.output
    names = [r["name"] for r in json.loads(result.stdout)]
    assert names and all(n.startswith("mobilenet_v3_") for n in names)
    _one_line_error(["list", "v9*"], "no model matches 'v9*'")


def test_the_command_line_starts_without_the_heavy_libraries_it_may_not_need():
    """torchvision (with torch._dynamo), matplotlib, numba and the runtimes are imported where they
    are used, so `mobilenets list` or a cached `select` does not pay for them at start-up."""
    import subprocess
    import sys

    code = ("import sys, mobilenets.cli; print(' '.join(m for m in ('torchvision', 'matplotlib', 'numba', "
            "'onnxruntime', 'openvino', 'timm', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at start-up: {out}"


def test_export_a_backbone_and_a_segmenter(tmp_path):
    result = runner.invoke(app, ["export", "mobilenet_v3_small", "--features", "--out-indices", "2,4",
                                 "--output-stride", "16", "--weights", "random", "--resolution", "64",
                                 "-o", str(tmp_path / "bb") + "/", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    side = json.loads(open(data["sidecar"]).read())
    assert side["task"] == "backbone" and side["outputs"] == ["feature0", "feature1"]
    assert side["output_shapes"] == [[1, 24, 8, 8], [1, 576, 4, 4]]  # strides 8 and 16 (the last made dilation)
    assert set(data["verification"]["outputs"]) == {"feature0", "feature1"}
    seg = runner.invoke(app, ["export", "mobilenet_v2_035", "--task", "lraspp", "--num-classes", "3",
                              "--weights", "random", "--resolution", "64", "-o", str(tmp_path / "seg") + "/"])
    assert seg.exit_code == 0, seg.output
    assert "max |out diff|" in seg.stdout
    _one_line_error(["export", "mobilenet_v2", "--task", "lraspp", "--out-indices", "1"], "add --features")
    _one_line_error(["export", "mobilenet_v2", "--task", "ssdlite320", "-f", "tflite", "--weights", "random"],
                    "exports to onnx only")
    _one_line_error(["export", "mobilenet_v2", "--num-classes", "3"], "--num-classes sets a --task's classes")
    _one_line_error(["export", "mobilenet_v2", "--features", "--out-indices", "a,b"], "whole numbers")
    _one_line_error(["export", "mobilenet_v2", "--format", "triton", "--features"], "--features do not apply")
