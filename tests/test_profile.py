"""MACs and params reproduce the published tables; activation memory behaves as MobileNeXt says."""
import pytest

from mobilenets import VARIANTS, create_model
from mobilenets.measure.profile import profile

# Published figures the official code does not reproduce, with the reason (checked below so that
# the documented gap cannot drift silently).
KNOWN_GAPS = {
    # the V1 table's own resolution scaling gives ~30M (34M contradicts 0.25_224 = 41M x (192/224)^2)
    ("mobilenet_v1_025_192", "macs"): "table entry inconsistent with its row",
    # the same architectures match at 224 and in params; at 96 pixels the TF table sits ~0.9M below
    # a direct count for the two thinnest widths (5% and 8% of such small totals)
    ("mobilenet_v2_050_96", "macs"): "TF table counts ~0.9M fewer at 96 px",
    ("mobilenet_v2_035_96", "macs"): "TF table counts ~0.9M fewer at 96 px",
}


def _close(measured: float, published: float, rel: float) -> bool:
    """Within ``rel``, or within the rounding of the published figure's last digit."""
    digits = str(published)
    unit = 10 ** -(len(digits.split(".")[1])) if "." in digits else 1
    return abs(measured - published) <= max(rel * published, unit / 2)


TABLE = [v for v in VARIANTS.values() if v.macs_m or v.params_m]


# MobileNeXt and MobileNetV4 build their official code, whose counts differ from their papers' tables:
# the MobileNeXt tests below and test_mobilenetv4 pin those differences.
@pytest.mark.parametrize("variant", [v for v in TABLE if v.family != "mobilenext"
                                     and not v.family.startswith("mobilenet_v4")], ids=lambda v: v.name)
def test_macs_and_params_match_published_tables(variant):
    prof = profile(create_model(variant.name))
    macs, params = prof.macs / 1e6, prof.params / 1e6
    if variant.macs_m and (variant.name, "macs") not in KNOWN_GAPS:
        assert _close(macs, variant.macs_m, 0.03), f"{variant.name}: {macs:.1f}M MACs vs {variant.macs_m}M"
    if variant.params_m:
        assert _close(params, variant.params_m, 0.03), f"{variant.name}: {params:.3f}M params vs {variant.params_m}M"


@pytest.mark.parametrize("name", ["mobilenet_v2_050_96", "mobilenet_v2_035_96"])
def test_thin_v2_at_96_known_gap_stays_small(name):
    macs = profile(create_model(name)).macs / 1e6
    assert 0 < macs - VARIANTS[name].macs_m < 1.0


def test_v1_025_192_follows_resolution_scaling_not_the_typo():
    macs = profile(create_model("mobilenet_v1_025_192")).macs / 1e6
    assert 29 < macs < 31


@pytest.mark.parametrize("name", ["mobilenext_140", "mobilenext_100"])
def test_mobilenext_matches_seed_table(name):
    v = VARIANTS[name]
    prof = profile(create_model(name))
    assert abs(prof.macs / 1e6 / v.macs_m - 1) <= 0.05
    assert abs(prof.params / 1e6 / v.params_m - 1) <= 0.05


def test_v3_small_with_seed_cifar_stem_is_about_61m_macs():
    prof = profile(create_model("mobilenet_v3_small", cifar_stem=True, resolution=32, num_classes=10))
    assert 55e6 < prof.macs < 65e6


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "mobilenet_v4_conv_small", "mobilenet_v4_hybrid_medium"])
def test_layer_rows_sum_to_totals(name):
    """Also for MobileNetV4: the pre-logits BatchNorm1d and the hybrids' layer scales go with the op
    they follow, and each Mobile MQA has a row for its attention products and its BatchNorm."""
    prof = profile(create_model(name))
    assert sum(lay.macs for lay in prof.layers) == prof.macs
    assert sum(lay.params for lay in prof.layers) == prof.params
    assert prof.peak_memory == max(lay.memory for lay in prof.layers)


def test_identity_tensor_multiplier_reduces_shortcut_memory():
    peaks = [profile(create_model("mobilenext", identity_mult=m)).shortcut_peak_memory for m in (1.0, 0.5, 1 / 6)]
    assert peaks[0] > peaks[1] > peaks[2]
    macs = {profile(create_model("mobilenext", identity_mult=m)).macs for m in (1.0, 0.5)}
    assert len(macs) == 1  # the multiplier saves memory, not MACs


def test_memory_counts_held_shortcuts():
    # a residual block holds its input while it runs: its ops carry it on top of their own tensors
    prof = profile(create_model("mobilenet_v2"))
    by_name = {lay.name: lay for lay in prof.layers}
    dw = by_name["blocks.2.dw.conv"]  # blocks.2: 24 -> 24, stride 1, residual, at 56x56
    held = 24 * 56 * 56 * 4
    own = (144 * 56 * 56 * 2) * 4
    assert dw.memory == own + held


# The seed's thin MobileNeXt rows disagree with the official code (and with each other: 0.75 needs
# the 1280-channel tail scaled down, 0.5 needs it kept). We build the official code; these bounds
# record the documented gap so that a change to the architecture shows up here.
@pytest.mark.parametrize("name,max_macs_gap,max_params_gap", [
    ("mobilenext_075", 0.05, 0.11), ("mobilenext_050", 0.07, 0.05), ("mobilenext_035", 0.07, 0.07)])
def test_mobilenext_thin_rows_documented_gap(name, max_macs_gap, max_params_gap):
    v = VARIANTS[name]
    prof = profile(create_model(name))
    assert abs(prof.macs / 1e6 / v.macs_m - 1) <= max_macs_gap
    assert abs(prof.params / 1e6 / v.params_m - 1) <= max_params_gap


@pytest.mark.parametrize("name", ["mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenext",
                                  "mobilenet_v4_hybrid_medium"])
def test_stages_sum_to_the_totals_and_follow_feature_info(name):
    model = create_model(name)
    prof = profile(model)
    res = model.config.resolution
    stages, after = prof.stages[:5], prof.stages[5:]
    assert [s.channels for s in stages] == [d["num_chs"] for d in model.feature_info]
    assert [s.reduction for s in stages] == [d["reduction"] for d in model.feature_info]
    assert [s.output_shape[1:] for s in stages] == [(d["num_chs"], res // d["reduction"], res // d["reduction"])
                                                     for d in model.feature_info]
    assert sum(s.macs for s in prof.stages) == prof.macs
    assert sum(s.params for s in prof.stages) == prof.params
    assert len(after) == 1 and after[0].params > 0  # the classifier (and V2's 1280 conv)
    assert max(s.memory for s in prof.stages) == prof.peak_memory


def test_backbone_profile_at_output_stride_16_has_no_classifier():
    plain = profile(create_model("mobilenet_v3_large", features_only=True))
    dilated = profile(create_model("mobilenet_v3_large", features_only=True, output_stride=16))
    assert len(dilated.stages) == 5 and dilated.stages[-1].reduction == 16
    assert dilated.params == plain.params and dilated.macs > plain.macs
    # same weights on 4x the pixels, except the first block's expansion, which ran at 14x14 already
    assert 3 * plain.stages[-1].macs < dilated.stages[-1].macs < 4 * plain.stages[-1].macs


# torchvision's documented figures for its MobileNetV3-Large task models (the weights' meta
# "num_params" and "_ops" GFLOPS), reproduced by ours. Faster R-CNN's are not compared: torchvision
# counts them with frozen BatchNorm (no BN parameters) and on its own set of proposals.
TORCHVISION_TASKS = {"ssdlite320": (3_440_060, 0.58), "lraspp": (3_221_538, 2.09)}


@pytest.mark.parametrize("task", list(TORCHVISION_TASKS))
def test_task_profile_matches_torchvision_and_splits_backbone_from_head(task):
    from mobilenets import detection, segmentation

    build = {"ssdlite320": detection.ssdlite320, "lraspp": segmentation.lraspp}[task]
    prof = profile(build("mobilenet_v3_large"))
    params, gmacs = TORCHVISION_TASKS[task]
    assert prof.params == params
    assert round(prof.macs / 1e9, 2) == gmacs
    top = [p for p in prof.parts if "." not in p.name]
    assert top[0].name == "backbone" and len(top) == 2
    assert sum(p.macs for p in top) == prof.macs and sum(p.params for p in top) == prof.params
    inside = [p for p in prof.parts if p.name.startswith("backbone.")]
    assert sum(p.macs for p in inside) == top[0].macs
