"""The runtime registry: everything the host knows about LiteRT, OpenVINO and ONNX Runtime.

One entry per runtime (nn-Meter's idea of a backend as one registry entry, without its shell
strings): the artifact it loads, its converter and precisions, the ``[runtime]`` spec fields
it accepts, the options its agent loader takes, whether strided-skip pairs are timed by
default, how conversion is spread over workers, and the handoff's file names and output
tolerances. Outside this file, spec validation messages and the on-device agent, no code
branches on a runtime's name. Adding a runtime: one ``Runtime`` here and one loader in
``profilers/agent/agent.py`` (CONTRIBUTING.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from devices import convert

if TYPE_CHECKING:
    from devices.spec import RuntimeSpec

Converter = Callable[[nn.Module, torch.Tensor, Path, str, "torch.Tensor | None"], None]


@dataclass(frozen=True)
class Runtime:
    name: str
    label: str  # as a user reads it
    suffix: str  # the file the runtime loads
    precisions: tuple[str, ...]
    convert: Converter  # (module, example, path, precision, calibration) -> the artifact
    handoff_files: tuple[str, ...]  # the model in this runtime's format, in a bundle
    # Output agreement with PyTorch per precision: (error relative to the largest |logit|,
    # least share of samples whose top-1 class agrees). See pipelines/handoff.compare_outputs.
    tolerance: dict[str, tuple[float, float]]
    companions: tuple[str, ...] = ()  # files beside it (OpenVINO's weights)
    fields: tuple[str, ...] = ()  # [runtime] spec fields beyond name, threads, precision
    options: Callable[[RuntimeSpec], dict[str, Any]] = field(default=lambda rt: {})
    pairs: bool = False  # time each layer with a following strided skip by default
    # Conversion: in the measuring process (fast converters), or spread over worker
    # processes, ``task`` blocks per worker task; ``chunk`` converts several blocks in one
    # converter call and splits the result (devices/tflite_split.py).
    in_process: bool = False
    task: int = 8
    chunk: Callable[[list[nn.Module], list[torch.Tensor]], list[bytes]] | None = None
    finish: Callable[[Path, torch.Tensor, str], None] | None = None  # after a chunk's split
    dists: tuple[str, ...] = ()  # host packages whose versions a bundle records

    def files(self, path: Path) -> list[Path]:
        """The artifact at ``path`` and the files that must travel with it."""
        return [path, *(path.with_suffix(s) for s in self.companions)]


# fp32 exporters reorder float arithmetic (~1e-6 here); FP16 rounds every tensor (~3e-3
# here); full int8 quantizes weights and activations (~2e-2 here, with min-max calibration on
# 64 training images), so it is also held to the top-1 class.
_FP32 = (1e-3, 1.0)
_FP16 = (2e-2, 0.98)
_INT8 = (0.1, 0.9)


def _litert_options(rt: RuntimeSpec) -> dict[str, Any]:
    opts: dict[str, Any] = {"xnnpack": rt.xnnpack}
    if rt.delegate:
        opts["delegate"] = {
            "library": rt.delegate.library,
            "options": dict(rt.delegate.options),
            "allow_cpu_fallback": rt.delegate.allow_cpu_fallback,
        }
    return opts


def _openvino_options(rt: RuntimeSpec) -> dict[str, Any]:
    opts: dict[str, Any] = {"device": rt.device, "performance_hint": rt.hint}
    if rt.streams is not None:
        opts["streams"] = rt.streams
    # Without a hint OpenVINO's CPU plugin runs bf16 where the CPU has it (AVX512-BF16, AMX):
    # an fp32 spec asks for fp32, or its timings are not of the fp32 model.
    hint = {"fp16": "f16", "fp32": "f32"}.get(rt.precision)
    if hint:
        opts["precision_hint"] = hint
    return opts


def _litert_finish(path: Path, example: torch.Tensor, precision: str) -> None:
    if precision == "int8":
        convert.quantize_int8(path, example, None)


REGISTRY: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime(
            name="litert",
            label="LiteRT",
            suffix=".tflite",
            precisions=("fp32", "int8"),
            convert=lambda m, x, p, prec, cal: convert.to_tflite(m, x, p, prec == "int8", cal),
            handoff_files=("model.tflite",),
            tolerance={"fp32": _FP32, "int8": _INT8},
            fields=("xnnpack", "delegate"),
            options=_litert_options,
            task=16,
            chunk=convert.tflite_chunk,
            finish=_litert_finish,
            dists=("litert-torch", "ai-edge-quantizer", "ai-edge-litert"),
        ),
        Runtime(
            name="openvino",
            label="OpenVINO",
            suffix=".xml",
            companions=(".bin",),
            precisions=("fp32", "fp16", "int8"),
            convert=lambda m, x, p, prec, cal: convert.to_openvino(m, x, p, prec, cal),
            handoff_files=("model.xml", "model.bin"),
            tolerance={"fp32": _FP32, "fp16": _FP16, "int8": _INT8},
            fields=("device", "hint", "streams"),
            options=_openvino_options,
            pairs=True,  # it optimises across a layer and the strided skip after it
            dists=("openvino", "nncf"),
        ),
        Runtime(
            name="onnxruntime",
            label="ONNX Runtime",
            suffix=".onnx",
            precisions=("fp32",),
            convert=lambda m, x, p, prec, cal: convert.to_onnx(m, x, p),
            handoff_files=("model.onnx",),
            tolerance={"fp32": _FP32},
            in_process=True,  # torch.onnx.export is fast enough beside the agent
            dists=("onnxruntime",),
        ),
    )
}
NAMES = tuple(REGISTRY)
# Every bundle also carries an ONNX copy (whatever the device runs), checked as ONNX Runtime
# fp32 is; its converter is torch.onnx.
ONNX_COPY = REGISTRY["onnxruntime"]
COMMON_DISTS = ("torch", "onnx")


def runtime(name: str) -> Runtime:
    try:
        return REGISTRY[name]
    except KeyError:
        raise convert.ConversionError(
            f"unknown runtime {name!r} (known: {', '.join(NAMES)})"
        ) from None


def by_suffix(path: Path) -> Runtime | None:
    return next((r for r in REGISTRY.values() if r.suffix == path.suffix), None)
