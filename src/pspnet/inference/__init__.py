"""Running a trained PSPNet: loading weights (``loading``), the test-time protocol (``testtime``:
scales, flip, the original release's averaging), the sliding window (``sliding``), evaluation (mIoU,
``evaluate``) and prediction to files (``predict``).

Fast CPU paths sit behind one entry point, ``prepare.prepare_for_inference``: BatchNorm folding
(``folding``), fused oneDNN convolutions (``onednn``), the folded fp32/bf16 network (``fast``), the
factored pyramid head (``factored_head``), ``torch.compile`` (``compiled``), torchao int8 (``int8``),
the ONNX Runtime backend (``onnxruntime``) and int8 calibration images (``calibration``).

Imports go one way: this package uses ``models``, ``data``, ``metrics`` and ``export``, never
``training`` or ``cli``.
"""
