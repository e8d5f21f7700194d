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
