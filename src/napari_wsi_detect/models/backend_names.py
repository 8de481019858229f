"""The names of the inference backends (models/backends.py), without importing torch:
the CLI's parser and the widget's combo list them before any network is loaded."""

from __future__ import annotations

BACKENDS = ("fp32", "bf16", "compile", "onnxruntime", "onnxruntime-int8", "openvino",
            "openvino-bf16")
BACKEND_CHOICES = ("auto", *BACKENDS)
# The default of every front (API, CLI, widget, batch): see docs/models.md "Backends" for
# why it is this one.
DEFAULT_BACKEND = "fp32"
BACKEND_HELP = ("inference backend: fp32 (exact torch, the reference), auto (the fastest "
                "installed backend within 1e-2 of fp32 on this CPU), bf16, compile, "
                "onnxruntime, onnxruntime-int8, openvino, openvino-bf16 "
                "(onnxruntime/openvino: pip install 'napari-wsi-detect[speed]')")
