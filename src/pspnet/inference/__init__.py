"""Running a trained PSPNet: loading weights, fast CPU paths (BatchNorm folding, fused oneDNN
convolutions, bf16, the factored pyramid head, ONNX Runtime, int8) behind ``prepare_for_inference``,
the test-time protocol (``testtime``: scales, flip, the original release's averaging), the sliding
window, evaluation (mIoU) and prediction to files.

Imports go one way: this package uses ``models``, ``data``, ``metrics`` and ``export``, never
``training`` or ``cli``.
"""
