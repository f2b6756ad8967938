"""Host-side converters: a torch module and an example input -> a runtime's artifact.

ONNX through ``torch.onnx.export`` (the TorchScript exporter: 0.2-0.3 s a block here against
1.2-4 s for the dynamo one), OpenVINO IR through ``openvino.convert_model``, LiteRT through
``litert_torch`` (fp32) and ``ai_edge_quantizer`` (full int8). Artifacts are cached by the
content hash of what they were made from, so a block converted for one device is not converted
again for another device with the same runtime and precision.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hurricane.errors import UserError

FORMATS = {"onnxruntime": ".onnx", "openvino": ".xml", "litert": ".tflite"}
CONVERTER_VERSION = 2  # bump when a converter's output changes for the same input
INT8_CALIBRATION = "min-max"  # how int8 activation ranges are taken (see _calibrate_min_max)


class ConversionError(UserError):
    """A module the runtime's converter could not turn into an artifact."""


@dataclass(frozen=True)
class Artifact:
    runtime: str
    precision: str
    key: str
    path: Path  # the file the runtime loads; OpenVINO's .bin lies beside its .xml

    @property
    def files(self) -> list[Path]:
        if self.path.suffix == ".xml":
            return [self.path, self.path.with_suffix(".bin")]
        return [self.path]


def default_cache_dir() -> Path:
    root = os.environ.get("HURRICANE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "hurricane"
    )
    return Path(root) / "artifacts"


def content_key(
    module: nn.Module,
    example: torch.Tensor,
    runtime: str,
    precision: str,
    calibration: torch.Tensor | None = None,
) -> str:
    """Hash of the module's structure and weights, the input shape, the target and the
    calibration data (an int8 model depends on it)."""
    h = hashlib.sha256()
    h.update(
        json.dumps(
            [
                runtime,
                precision,
                list(example.shape),
                str(example.dtype),
                CONVERTER_VERSION,
                repr(module),
            ]
        ).encode()
    )
    if precision == "int8":
        h.update(INT8_CALIBRATION.encode())
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    if calibration is not None:
        h.update(b"calibration")
        h.update(calibration.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


_CONVERT_LOCK = threading.Lock()  # torch tracing is not thread-safe; devices share one host


def _quiet(fn: Callable[[], None]) -> None:
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


def to_onnx(module: nn.Module, example: torch.Tensor, out: Path) -> None:
    buf = io.BytesIO()
    _quiet(
        lambda: torch.onnx.export(
            module,
            (example,),
            buf,
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

    check._hurricane = True
    OptInChecker.check = check


def to_openvino(
    module: nn.Module,
    example: torch.Tensor,
    out: Path,
    precision: str,
    calibration: torch.Tensor | None = None,
) -> None:
    """IR in FP32 or FP16; INT8 through NNCF post-training quantization (optional extra)."""
    import openvino as ov

    _no_openvino_telemetry()
    nncf = None
    if precision == "int8":
        try:
            import nncf
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

    _quiet(convert)


def to_tflite(
    module: nn.Module,
    example: torch.Tensor,
    out: Path,
    int8: bool,
    calibration: torch.Tensor | None,
) -> None:
    try:
        import litert_torch
    except ImportError:
        raise ConversionError(
            "LiteRT conversion needs litert-torch on the host: .venv/bin/pip install litert-torch"
        ) from None

    def convert() -> None:
        litert_torch.convert(module, (example,)).export(str(out))

    _quiet(convert)
    if int8:
        _quantize_int8(out, example, calibration)


def _quantize_int8(path: Path, example: torch.Tensor, calibration: torch.Tensor | None) -> None:
    """Full-int8 post-training quantization with a representative batch."""
    from ai_edge_quantizer import quantizer, recipe

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
    import litert_torch
    from ai_edge_litert.interpreter import Interpreter

    from devices.tflite_split import split_outputs

    holder: dict[str, object] = {}
    chunk = _Chunk(modules).eval()
    _quiet(lambda: holder.setdefault("m", litert_torch.convert(chunk, tuple(examples))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chunk.tflite"
        _quiet(lambda: holder["m"].export(str(path)))
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


class ArtifactCache:
    """Converted artifacts on disk, named by content hash; conversion happens at most once."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = 0

    def path_for(self, key: str, runtime: str) -> Path:
        return self.root / runtime / key[:2] / f"{key}{FORMATS[runtime]}"

    def get(
        self,
        module: nn.Module,
        example: torch.Tensor,
        runtime: str,
        precision: str = "fp32",
        calibration: torch.Tensor | None = None,
    ) -> Artifact:
        if runtime not in FORMATS:
            raise ConversionError(f"unknown runtime {runtime!r} (known: {', '.join(FORMATS)})")
        module = module.eval()
        key = content_key(module, example, runtime, precision, calibration)
        path = self.path_for(key, runtime)
        art = Artifact(runtime, precision, key, path)
        if all(f.exists() for f in art.files):
            self.hits += 1
            return art
        self.misses += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        # Build in a private folder, then move into place: a killed conversion leaves no
        # half-written artifact that a later run would trust.
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            tmp_path = Path(tmp) / path.name
            try:
                with _CONVERT_LOCK, torch.no_grad():
                    if runtime == "onnxruntime":
                        to_onnx(module, example, tmp_path)
                    elif runtime == "openvino":
                        to_openvino(module, example, tmp_path, precision, calibration)
                    else:
                        to_tflite(module, example, tmp_path, precision == "int8", calibration)
            except ConversionError:
                raise
            except Exception as exc:  # converters raise many types; keep the first line
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise ConversionError(
                    f"{runtime} conversion failed: {type(exc).__name__}: {first[:300]}"
                ) from exc
            tmp_art = Artifact(runtime, precision, key, tmp_path)
            for src, dst in zip(tmp_art.files, art.files):
                shutil.move(str(src), dst)
        return art

    def get_many(
        self,
        items: list[tuple[nn.Module, torch.Tensor]],
        runtime: str,
        precision: str = "fp32",
        chunk: int = 16,
    ) -> list[Artifact | ConversionError]:
        """Artifacts for many blocks; LiteRT ones not yet cached are converted a chunk at a
        time (one converter call per chunk), and a chunk that fails falls back to one call
        per block so a bad block fails alone. Each result is an Artifact or the error."""
        results: list[Artifact | ConversionError | None] = [None] * len(items)
        todo: list[int] = []
        for i, (module, x) in enumerate(items):
            key = content_key(module.eval(), x, runtime, precision)
            art = Artifact(runtime, precision, key, self.path_for(key, runtime))
            if all(f.exists() for f in art.files):
                self.hits += 1
                results[i] = art
            else:
                todo.append(i)
        if runtime == "litert" and chunk > 1:
            for start in range(0, len(todo), chunk):
                idx = todo[start : start + chunk]
                if len(idx) < 2:
                    continue
                try:
                    with _CONVERT_LOCK, torch.no_grad():
                        parts = tflite_chunk([items[i][0] for i in idx], [items[i][1] for i in idx])
                except Exception:  # noqa: BLE001 - any failure: convert these one by one
                    continue
                for i, part in zip(idx, parts):
                    results[i] = self._store_tflite(items[i][0], items[i][1], part, precision)
        for i, (module, x) in enumerate(items):
            if results[i] is None:
                try:
                    results[i] = self.get(module, x, runtime, precision)
                except ConversionError as exc:
                    results[i] = exc
        return results  # type: ignore[return-value]

    def _store_tflite(
        self, module: nn.Module, x: torch.Tensor, fp32: bytes, precision: str
    ) -> Artifact | ConversionError:
        key = content_key(module, x, "litert", precision)
        art = Artifact("litert", precision, key, self.path_for(key, "litert"))
        art.path.parent.mkdir(parents=True, exist_ok=True)
        self.misses += 1
        with tempfile.TemporaryDirectory(dir=art.path.parent) as tmp:
            tmp_path = Path(tmp) / art.path.name
            tmp_path.write_bytes(fp32)
            if precision == "int8":
                try:
                    with _CONVERT_LOCK:
                        _quiet(lambda: _quantize_int8(tmp_path, x, None))
                except Exception as exc:  # noqa: BLE001
                    return ConversionError(f"litert int8 quantization failed: {exc}")
            shutil.move(str(tmp_path), art.path)
        return art
