"""Device spec files: every shipped example loads; bad fields stop with one clear line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from devices.spec import builtin_devices, load_device, parse_device
from hurricane.tomlcheck import ConfigError

EXAMPLES = ("local-litert", "local-openvino", "local-onnxruntime", "mobile-cpu", "dsp", "vpu")


def test_examples_load() -> None:
    assert set(EXAMPLES) <= set(builtin_devices())
    specs = {name: load_device(name) for name in EXAMPLES}
    assert specs["local-litert"].is_local and specs["local-litert"].runtime.name == "litert"
    assert (
        specs["mobile-cpu"].transport.type == "ssh" and specs["mobile-cpu"].transport.port == 8022
    )
    assert specs["mobile-cpu"].affinity == (4, 5, 6, 7)
    dsp = specs["dsp"].runtime
    assert dsp.precision == "int8" and dsp.delegate.library.endswith("libQnnTFLiteDelegate.so")
    assert dsp.agent_options()["delegate"]["allow_cpu_fallback"] is False
    assert dsp.agent_options()["delegate"]["options"]["backend_type"] == "htp"
    vpu = specs["vpu"].runtime
    assert vpu.device == "NPU" and vpu.agent_options()["precision_hint"] == "f16"


def test_load_from_path(tmp_path: Path) -> None:
    f = tmp_path / "board.toml"
    f.write_text('kind = "cpu"\n[runtime]\nname = "onnxruntime"\nthreads = 2\n')
    spec = load_device(f)
    assert spec.name == "board" and spec.runtime.threads == 2 and spec.source == str(f)


BASE = """
name = "x"
kind = "mobile-cpu"
[transport]
type = "ssh"
host = "h"
[runtime]
name = "litert"
"""


@pytest.mark.parametrize(
    ("edit", "field", "needle"),
    [
        (('kind = "mobile-cpu"', 'kind = "phone"'), "kind", "must be one of"),
        (('name = "litert"', 'name = "tensorrt"'), "runtime.name", "must be one of"),
        (('host = "h"', ""), "transport.host", "missing"),
        (('host = "h"', 'host = "h"\nport = 70000'), "transport.port", "1..65535"),
        (('host = "h"', 'host = "h"\nport = "22"'), "transport.port", "expected an integer"),
        (('name = "litert"', 'name = "litert"\nthreads = 0'), "runtime.threads", ">= 1"),
        (('name = "litert"', 'name = "litert"\ndevice = "NPU"'), "runtime.device", "OpenVINO"),
        (('name = "litert"', 'name = "litert"\nfoo = 1'), "runtime.foo", "unknown field"),
        (('type = "ssh"', 'type = "telnet"'), "transport.type", "must be one of"),
        (('kind = "mobile-cpu"', 'kind = "dsp"'), "runtime.name", "full-int8"),
        (('kind = "mobile-cpu"', 'kind = "vpu"'), "runtime.name", "OpenVINO"),
        (
            ('kind = "mobile-cpu"', 'kind = "mobile-cpu"\naffinity = [-1]'),
            "affinity",
            "non-negative",
        ),
        (("[runtime]", "[measure]\nrounds = 0\n[runtime]"), "measure.rounds", ">= 1"),
        # nan passes every "< lo" test: it turned noise flagging off without a word
        (
            ("[runtime]", "[measure]\ncv_threshold = nan\n[runtime]"),
            "measure.cv_threshold",
            "finite",
        ),
        (
            ("[runtime]", "[measure]\ndrift_threshold = inf\n[runtime]"),
            "measure.drift_threshold",
            "finite",
        ),
        (
            ('host = "h"', 'host = "h"\nconnect_timeout_s = inf'),
            "transport.connect_timeout_s",
            "finite",
        ),
        (('name = "x"', 'name = "x/../../../../../ESCAPED"'), "name", "plain file name"),
    ],
)
def test_bad_fields(edit: tuple[str, str], field: str, needle: str) -> None:
    text = BASE.replace(*edit)
    with pytest.raises(ConfigError) as err:
        parse_device(tomllib.loads(text), source="bad.toml")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"bad.toml: {field}: "), msg
    assert needle in msg


def test_dsp_needs_delegate() -> None:
    text = BASE.replace('kind = "mobile-cpu"', 'kind = "dsp"').replace(
        'name = "litert"', 'name = "litert"\nprecision = "int8"'
    )
    with pytest.raises(ConfigError, match=r"runtime.delegate: .*libQnnTFLiteDelegate.so"):
        parse_device(tomllib.loads(text), source="bad.toml")


def test_local_transport_rejects_ssh_fields() -> None:
    text = 'kind = "cpu"\n[transport]\nhost = "h"\n[runtime]\nname = "onnxruntime"\n'
    with pytest.raises(ConfigError, match=r"transport.host: only an ssh transport"):
        parse_device(tomllib.loads(text), source="bad.toml")


def test_missing_and_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="examples: .*local-litert"):
        load_device("no-such-device")
    with pytest.raises(ConfigError, match="not found"):
        load_device(tmp_path / "nope.toml")
    bad = tmp_path / "broken.toml"
    bad.write_text("kind = [")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML"):
        load_device(bad)


def test_a_name_that_leaves_its_folder_is_refused_at_load(tmp_path: Path) -> None:
    """A device's name names run folders (RUN/DEVICE, RUN/bundles/DEVICE-BUDGET)."""
    f = tmp_path / "evil.toml"
    f.write_text(BASE.replace('name = "x"', 'name = "x/../../../../../ESCAPED"'))
    with pytest.raises(ConfigError) as err:
        load_device(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}: name: a device name must be a plain file name"), msg
    assert "'x/../../../../../ESCAPED'" in msg and "\n" not in msg


def test_a_spec_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "latin.toml"
    f.write_bytes(BASE.replace('host = "h"', 'host = "caf\xe9"').encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_device(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}: not UTF-8 text") and "0xe9" in msg and "\n" not in msg
