"""Deployment: export (ONNX, OpenVINO IR, TFLite), int8 quantization, one Session over every runtime.

    from mobilenets.deploy import export, open_session
    result = export(model, "onnx", "out/", int8=True, calib="calib_images/")
    session = open_session(result.path, threads=1)
    logits = session.run(batch_nchw_float32)

Runtimes are imported only when used: a missing one is a ``UsageError`` naming its pip package.
"""
from .export import FORMATS, ExportResult, VerificationError, export
from .runtimes import BACKENDS, Session, available_backends, open_session

__all__ = ["BACKENDS", "FORMATS", "ExportResult", "Session", "VerificationError", "available_backends", "export",
           "open_session"]
