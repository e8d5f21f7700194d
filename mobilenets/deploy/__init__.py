"""Deployment: export for every runtime, int8 quantization, one Session over all of them.

    from mobilenets.deploy import export, open_session
    result = export(model, "onnx", "out/", int8=True, calib="calib_images/")
    session = open_session(result.path, threads=1)
    logits = session.run(batch_nchw_float32)

    backbone = create_model("mobilenet_v3_large", features_only=True)   # or a segmenter, a detector
    maps = open_session(export(backbone, "ncnn", "out/").path).run_all(batch_nchw_float32)

The modules, each importing only those before it: ``graph`` (the inference module, ONNX
rewrites), ``calibration`` (images for calibration and checks), ``common`` (errors, sidecar,
progress, ``quiet``), ``tasks`` (what a classifier, backbone, segmenter or detector exports as:
named outputs, input, sidecar fields), ``runtimes/`` (one module per runtime: its converter,
int8, session and requirements, listed in one table with ``open_session``), ``quantize`` (int8
dispatch and report), ``accuracy`` (accuracy-controlled int8), ``qat`` (quantization-aware fine-tuning),
``export`` (all of it, verified and installed atomically). Optional runtimes are imported only
when used: a missing one is a ``UsageError`` naming its pip package.
"""
from .common import ExportError, Steps, VerificationError
from .export import FORMATS, ExportResult, export, qat_finetune
from .runtimes import BACKENDS, Session, available_backends, open_session

__all__ = ["BACKENDS", "FORMATS", "ExportError", "ExportResult", "Session", "Steps", "VerificationError",
           "available_backends", "export", "open_session", "qat_finetune"]
