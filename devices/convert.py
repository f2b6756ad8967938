"""Host-side converters: a torch module and an example input -> a runtime's artifact file.

ONNX through ``torch.onnx.export`` (the TorchScript exporter: 0.2-0.3 s a block here against
1.2-4 s for the dynamo one), OpenVINO IR through ``openvino.convert_model``, LiteRT through
``litert_torch`` (fp32) and ``ai_edge_quantizer`` (full int8). Artifacts are cached by the
content hash of what they were made from, so a block converted for one device is not converted
again for another device with the same runtime and precision (``devices/artifacts.py``);
which converter a runtime uses is its registry entry's (``devices/runtimes.py``).
"""

from __future__ import annotations

import importlib
import io
import os
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hurricane.errors import UserError

CONVERTER_VERSION = 2  # bump when a converter's output changes for the same input
INT8_CALIBRATION = "min-max"  # how int8 activation ranges are taken (see _calibrate_min_max)
CONVERT_LOCK = threading.Lock()  # torch tracing is not thread-safe; devices share one host


class ConversionError(UserError):
    """A module the runtime's converter could not turn into an artifact."""


def quiet(fn: Callable[[], object]) -> None:
    """Run a converter with its chatter (Python warnings, progress logs, C++ logs written
    straight to file descriptors 1 and 2) kept out of the user's terminal."""
    # Tracing warns about Python-level shape checks in sliceable layers; at fixed shapes they
    # are constants, so the warnings say nothing to a user.
    with warnings.catch_warnings(), tempfile.TemporaryFile() as sink:
        warnings.simplefilter("ignore")
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            fn()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def quiet_import(name: str) -> Any:
    """Import a converter's package with its import-time chatter (torchao's "Failed to load"
    lines, torch pytree deprecations, absl and oneDNN banners) kept out of the terminal; in
    a spawned conversion worker this is where all of it comes from."""
    if name in sys.modules:
        return sys.modules[name]
    holder: dict[str, Any] = {}
    quiet(lambda: holder.setdefault("m", importlib.import_module(name)))
    return holder["m"]


def to_onnx(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    buf = io.BytesIO()
    quiet(
        lambda: torch.onnx.export(
            module,
            (example,),
            # torch annotates f as a path only; the TorchScript exporter writes to a file object
            buf,  # type: ignore[arg-type]
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["output"],
        )
    )
    out.write_bytes(buf.getvalue())


def _no_openvino_telemetry() -> None:
    """OpenVINO's converter reports usage over the network unless the user decided otherwise,
    one child process per event, each left to time out when offline: dozens per block, for
    thousands of blocks. Treat "no decision" as no; an explicit ``opt_in_out --opt_in`` stands."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return
    if getattr(OptInChecker.check, "_hurricane", False):
        return
    original = OptInChecker.check

    def check(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        return ConsentCheckResult.DECLINED if result == ConsentCheckResult.NO_FILE else result

    check.__dict__["_hurricane"] = True  # the mark tested above: patch once per process
    OptInChecker.check = check


def to_openvino(
    module: nn.Module,
    example: torch.Tensor,
    out: Path,
    precision: str,
    calibration: torch.Tensor | None = None,
) -> None:
    """IR in FP32 or FP16; INT8 through NNCF post-training quantization (optional extra)."""
    ov = quiet_import("openvino")

    _no_openvino_telemetry()
    nncf: Any = None
    if precision == "int8":
        try:
            nncf = importlib.import_module("nncf")
        except ImportError:
            raise ConversionError(
                "OpenVINO INT8 needs NNCF on the host: .venv/bin/pip install 'hurricane-nas[nncf]'"
            ) from None

    def convert() -> None:
        model = ov.convert_model(module, example_input=example, input=[tuple(example.shape)])
        if nncf is not None:
            samples = calibration if calibration is not None else torch.randn(8, *example.shape[1:])
            data = nncf.Dataset([s.unsqueeze(0).numpy() for s in samples])
            model = nncf.quantize(model, data, subset_size=len(samples))
        ov.save_model(model, str(out), compress_to_fp16=precision == "fp16")

    quiet(convert)


def to_tflite(
    module: nn.Module,
    example: torch.Tensor,
    out: Path,
    int8: bool,
    calibration: torch.Tensor | None,
) -> None:
    try:
        litert_torch = quiet_import("litert_torch")
    except ImportError:
        raise ConversionError(
            "LiteRT conversion needs litert-torch on the host: .venv/bin/pip install litert-torch"
        ) from None

    def convert() -> None:
        litert_torch.convert(module, (example,)).export(str(out))

    quiet(convert)
    if int8:
        quantize_int8(out, example, calibration)


def quantize_int8(path: Path, example: torch.Tensor, calibration: torch.Tensor | None) -> None:
    """Full-int8 post-training quantization with a representative batch."""
    quantizer = quiet_import("ai_edge_quantizer.quantizer")
    recipe = quiet_import("ai_edge_quantizer.recipe")

    qt = quantizer.Quantizer(str(path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    samples = calibration if calibration is not None else torch.randn(8, *example.shape[1:])
    data = [{"args_0": s.unsqueeze(0).numpy()} for s in samples]
    signature = next(
        iter(
            qt.get_signature_names() if hasattr(qt, "get_signature_names") else ["serving_default"]
        )
    )
    result = qt.quantize(_calibrate_min_max(qt, {signature: data}))
    path.write_bytes(result.quantized_model)


def _calibrate_min_max(qt, data: dict) -> dict:
    """Activation ranges as the min and max over every calibration sample, as TFLite's own
    converter takes them. ai-edge-quantizer's default is a moving average that weighs the
    first sample 0.95: logits of later samples fell outside the range and were clipped (a
    relative output error of 0.74 against PyTorch, measured on a Fashion-MNIST model)."""
    try:
        from ai_edge_quantizer import calibrator
        from ai_edge_quantizer.utils import qsv_utils

        calib = calibrator.Calibrator(
            qt._float_model_buffer, qsv_update_func=qsv_utils.min_max_update
        )
        calib.calibrate(data, qt._recipe_manager)
        return calib.get_model_qsvs()
    except (ImportError, AttributeError, TypeError):  # another release: its own default
        return qt.calibrate(data)


class _Chunk(nn.Module):
    """Independent blocks as one graph: block i maps input i to output i."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(block(x) for block, x in zip(self.blocks, xs))


def tflite_chunk(modules: list[nn.Module], examples: list[torch.Tensor]) -> list[bytes]:
    """Convert several blocks with one litert-torch call and cut the result into one model
    per block; each part is checked to take and give the shapes its block does."""
    litert_torch = quiet_import("litert_torch")
    Interpreter = quiet_import("ai_edge_litert.interpreter").Interpreter

    from devices.tflite_split import split_outputs

    holder: dict[str, Any] = {}
    chunk = _Chunk(modules).eval()
    quiet(lambda: holder.setdefault("m", litert_torch.convert(chunk, tuple(examples))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chunk.tflite"
        quiet(lambda: holder["m"].export(str(path)))
        parts = split_outputs(path.read_bytes())
    for part, module, x in zip(parts, modules, examples):
        it = Interpreter(model_content=part)
        (inp,), (out,) = it.get_input_details(), it.get_output_details()
        want = tuple(module(x).shape)
        if tuple(inp["shape"]) != tuple(x.shape) or tuple(out["shape"]) != want:
            raise ConversionError(
                f"split model has shapes {tuple(inp['shape'])} -> {tuple(out['shape'])}, "
                f"expected {tuple(x.shape)} -> {want}"
            )
    return parts
