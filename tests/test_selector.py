"""The on-device depth selector (profilers/agent/selector.py) with real LiteRT depth variants:
its switching rule under a controlled clock, a real slowdown from CPU hogs on the same core,
bad manifests, and its CLI."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from profilers.agent.selector import Selector, SelectorError, Variant, read_manifest

SELECTOR = Path(__file__).resolve().parents[1] / "profilers" / "agent" / "selector.py"
DEPTHS = {"full": 6, "s3": 3, "s1": 1}  # heavy 3x3 convolutions, 64 channels at 56x56
HOG = "import os, sys\nos.sched_setaffinity(0, {int(sys.argv[1])})\nwhile True: pass"


def _idlest_cpu() -> int:
    """The allowed CPU that was idlest over a moment: other work on the machine adds noise."""

    def idle() -> dict[int, int]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                fields = line.split()
                if fields[0][3:].isdigit():
                    out[int(fields[0][3:])] = int(fields[4]) + int(fields[5])
        return out

    before = idle()
    time.sleep(0.3)
    after = idle()
    return max(sorted(os.sched_getaffinity(0)), key=lambda c: after.get(c, 0) - before.get(c, 0))


@pytest.fixture(scope="module")
def pinned():
    """This thread (which runs the interpreters, threads=1) pinned to one CPU, then restored."""
    before = os.sched_getaffinity(0)
    cpu = _idlest_cpu()
    os.sched_setaffinity(0, {cpu})
    yield cpu
    os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, single_thread, pinned):
    """A bundle of three real .tflite depth variants, each timed here (never hard-coded)."""
    import torch
    from torch import nn

    from devices.convert import to_tflite

    out = tmp_path_factory.mktemp("bundle")
    example = torch.randn(1, 64, 56, 56)
    for name, layers in DEPTHS.items():
        torch.manual_seed(layers)
        convs = [nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU()) for _ in range(layers)]
        to_tflite(nn.Sequential(*convs).eval(), example, out / f"{name}.tflite", False, None)
    timers = {n: Selector([Variant(n, str(out / f"{n}.tflite"), 1.0)], 1e9) for n in DEPTHS}
    x = np.random.RandomState(0).standard_normal(timers["full"].input_shape).astype(np.float32)
    samples: dict[str, list[float]] = {n: [] for n in DEPTHS}
    for r in range(6):  # rounds interleaved across the variants; the first is warm-up
        for name, timer in timers.items():
            for _ in range(5):
                timer.infer(x)
                if r:
                    samples[name].append(timer.last_ms)
    measured = {n: statistics.median(s) for n, s in samples.items()}
    assert measured["full"] > 3 * measured["s1"], measured
    depths = [{"name": n, "file": f"{n}.tflite", "measured_ms": measured[n]} for n in DEPTHS]
    manifest = {"runtime": {"name": "litert", "threads": 1, "settings": {"xnnpack": True}}}
    manifest["adaptive"] = {"depths": depths}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, measured


class Clock:
    """perf_counter's stand-in: every inference takes load(i) * ms[current] milliseconds."""

    def __init__(self, ms: dict[str, float], load) -> None:
        self.ms, self.load, self.t, self.started = ms, load, 0.0, False
        self.sel: Selector | None = None

    def __call__(self) -> float:
        if self.started:
            assert self.sel is not None
            self.t += self.load(self.sel.count) * self.ms[self.sel.current] / 1000.0
        self.started = not self.started
        return self.t


def _fake_selector(bundle, load, budget_ms: float = 12.0, **kw) -> Selector:
    """Three real interpreters (all of the fast file) whose timings a Clock dictates."""
    ms = {"full": 10.0, "mid": 5.0, "low": 2.0}
    path = str(bundle[0] / "s1.tflite")
    clock = Clock(ms, load)
    sel = Selector([Variant(n, path, v) for n, v in ms.items()], budget_ms, clock=clock, **kw)
    clock.sel = sel
    return sel


def _run(sel: Selector, n: int) -> None:
    x = np.zeros(sel.input_shape, dtype=sel.input_dtype)
    for _ in range(n):
        sel.infer(x)


def test_rule_down_to_deepest_predicted_fit_and_up_after_patience(bundle):
    phases = [(0, 1.0), (80, 2.0), (88, 1.0), (200, 4.0), (300, 10.0), (400, 1.0)]
    sel = _fake_selector(bundle, lambda i: next(v for s, v in reversed(phases) if i >= s))
    _run(sel, 80)  # 10 ms on full under a 12 ms budget: stays
    assert sel.current == "full" and sel.switches == []
    _run(sel, 8)  # one window at 20 ms: slowdown 2, mid predicted 10 <= 12, low not needed
    assert sel.switches == [
        {"at": 88, "from": "full", "to": "mid", "recent_ms": pytest.approx(20.0), "reason": "down"}
    ]
    # Load gone: mid at 5 ms predicts full at 10 <= 0.85 * 12, but only after 3 full windows.
    _run(sel, 23)
    assert sel.current == "mid"
    _run(sel, 1)
    assert sel.current == "full" and sel.switches[-1]["at"] == 112
    assert sel.switches[-1]["reason"] == "up"
    _run(sel, 200 - 112 + 8)  # 4x: mid would be 20 ms, so straight down to low (8 ms)
    down = {"at": 208, "from": "full", "to": "low", "recent_ms": pytest.approx(40.0)}
    assert sel.switches[-1] == {**down, "reason": "down"}
    _run(sel, 300 - 208 + 80)  # 10x: low runs 20 ms, over budget, but there is nothing shallower
    assert sel.current == "low" and len(sel.switches) == 3
    sel2 = _fake_selector(bundle, lambda i: 10.0)
    _run(sel2, 8)  # nothing fits: the shallowest
    assert [s["to"] for s in sel2.switches] == ["low"]
    _run(sel, 48)  # load gone at 400: up from low straight to full, at the third window
    assert sel.switches[-1] == {
        "at": 424,
        "from": "low",
        "to": "full",
        "recent_ms": pytest.approx(2.0),
        "reason": "up",
    }


def test_rule_does_not_flap_near_the_budget(bundle):
    """Full runs 12.5 ms one window in four and 11.5 ms in the others (budget 12): one switch
    down, then mid's 5.75 ms predicts full at 11.5 > 0.85 * 12, so it stays on mid. Without the
    margin (1.0) the same trace flaps every four windows, so this test can tell them apart."""

    def load(i: int) -> float:
        return 1.25 if (i // 8) % 4 == 0 else 1.15

    sel = _fake_selector(bundle, load)
    _run(sel, 8 * 40)
    assert [(s["at"], s["to"]) for s in sel.switches] == [(8, "mid")]
    flappy = _fake_selector(bundle, load, up_margin=1.0)
    _run(flappy, 8 * 40)
    assert [s["to"] for s in flappy.switches[:4]] == ["mid", "full", "mid", "full"]
    assert len(flappy.switches) >= 15
    # Down to mid, which then runs just under the budget (11-11.9 ms, jittering per inference):
    # it neither goes back up nor further down.
    hover = _fake_selector(bundle, lambda i: 2.4 if i < 8 else (2.2, 2.38, 2.3)[i % 3])
    _run(hover, 8 * 40)
    assert [(s["at"], s["to"]) for s in hover.switches] == [(8, "mid")]


def test_real_slowdown_switches_down_and_back_up(bundle, pinned):
    """Two busy processes on this thread's CPU slow every variant about 3x: the selector goes
    down to a variant that fits, stays within the budget while they run, and is back on full
    once they are gone."""
    path, measured = bundle
    budget = 1.5 * measured["full"]
    sel = Selector.from_bundle(str(path), budget)
    x = np.random.RandomState(1).standard_normal(sel.input_shape).astype(np.float32)
    log: list[tuple[str, float]] = []  # (variant, ms) of each inference while loaded

    def run_until(done, timeout_s: float, record: bool = False) -> None:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not done():
            name = sel.current
            sel.infer(x)
            if record:
                log.append((name, sel.last_ms))

    def last_at() -> int:
        return sel.switches[-1]["at"] if sel.switches else 0

    run_until(lambda: False, 0.5)
    run_until(lambda: sel.current == "full", 5.0)  # other work on the machine may have struck
    assert sel.current == "full", sel.switches
    hogs = []
    try:
        hogs = [subprocess.Popen([sys.executable, "-c", HOG, str(pinned)]) for _ in range(2)]
        time.sleep(0.3)
        start, first = len(sel.switches), sel.count
        run_until(lambda: len(sel.switches) > start, 6.0, record=True)
        assert len(sel.switches) > start, f"no switch while loaded: {log[-16:]}, {measured}"
        run_until(lambda: sel.count - last_at() >= 40, 5.0, record=True)  # settle
        loaded = sel.current
        since = [ms for name, ms in log[last_at() - first :]]
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert all(s["reason"] == "down" for s in sel.switches[start:]), sel.switches
    assert loaded != "full" and len(since) >= 40, (sel.switches, measured)
    assert statistics.median(since) <= budget, (sel.switches, measured, since)
    run_until(lambda: sel.current == "full", 6.0)
    assert sel.current == "full" and sel.switches[-1]["reason"] == "up", sel.switches


def test_cli_prints_switches_and_a_summary(bundle):
    path, measured = bundle
    cmd = [sys.executable, str(SELECTOR), str(path), "--seed", "3"]
    calm = subprocess.run(cmd + ["--budget-ms", "1e6", "--runs", "30"], capture_output=True)
    assert calm.returncode == 0, calm.stderr
    lines = [json.loads(line) for line in calm.stdout.splitlines()]
    assert lines == [lines[-1]] and lines[-1]["type"] == "summary"
    assert lines[-1]["runs"] == 30 and lines[-1]["final"] == "full"
    assert lines[-1]["ms_per_variant"]["full"] > 0 and lines[-1]["ms_per_variant"]["s1"] == 0
    # A budget nothing meets: down to the shallowest after one window, and it stays there.
    tight = subprocess.run(cmd + ["--budget-ms", "0.001", "--seconds", "0.5"], capture_output=True)
    assert tight.returncode == 0, tight.stderr
    *switches, summary = [json.loads(line) for line in tight.stdout.splitlines()]
    assert [(s["type"], s["at"], s["to"], s["reason"]) for s in switches] == [
        ("switch", 8, "s1", "down")
    ]
    assert summary["final"] == "s1" and summary["runs"] > 8 and summary["switches"] == 1


@pytest.mark.parametrize(
    "change, words",
    [
        (lambda m: m.pop("adaptive"), "adaptive is missing"),
        (lambda m: m["adaptive"]["depths"][1].pop("file"), "adaptive.depths[1].file is missing"),
        (lambda m: m["adaptive"]["depths"][2].update(file="gone.tflite"), "gone.tflite not found"),
        (lambda m: m["adaptive"]["depths"][0].update(file="../x.tflite"), "../x.tflite not found"),
        (lambda m: m["adaptive"]["depths"][0].update(measured_ms="1"), "measured_ms is missing"),
        (lambda m: m["adaptive"].update(depths=[]), "adaptive.depths is empty"),
        (lambda m: m["runtime"].update(name="tensorrt"), "runtime.name 'tensorrt'"),
        (lambda m: m["runtime"].update(threads=0), "runtime.threads"),
        (lambda m: m["runtime"]["settings"].update(streams=2), "runtime.settings streams"),
    ],
)
def test_bad_manifest_is_one_line_naming_the_field(bundle, tmp_path, change, words):
    for n in DEPTHS:
        (tmp_path / f"{n}.tflite").symlink_to(bundle[0] / f"{n}.tflite")
    (tmp_path.parent / "x.tflite").write_bytes(b"")  # outside the bundle: refused though there
    manifest = json.loads((bundle[0] / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert len(read_manifest(str(tmp_path))[3]) == 3  # the copy as it is reads fine
    change(manifest)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SelectorError) as err:
        read_manifest(str(tmp_path))
    assert words in str(err.value) and "\n" not in str(err.value)
    cli = [sys.executable, str(SELECTOR), str(tmp_path), "--budget-ms", "5"]
    proc = subprocess.run(cli, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


def test_onnxruntime_and_openvino_load_the_same_variant(bundle, tmp_path, single_thread):
    """The other two runtimes' loaders: the one-layer variant as ONNX and as OpenVINO IR (fp32,
    as a handoff manifest asks: OpenVINO would run bf16 on a CPU that has it) gives what LiteRT
    gives."""
    import torch
    from torch import nn

    from devices.convert import to_onnx, to_openvino

    torch.manual_seed(DEPTHS["s1"])  # the same weights as the bundle's s1
    module = nn.Sequential(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU())).eval()
    example = torch.randn(1, 64, 56, 56)
    to_onnx(module, example, tmp_path / "s1.onnx")
    to_openvino(module, example, tmp_path / "s1.xml", "fp32")
    x = np.random.RandomState(2).standard_normal((1, 64, 56, 56)).astype(np.float32)
    ref = Selector([Variant("s1", str(bundle[0] / "s1.tflite"), 1.0)], 1e9).infer(x)
    for runtime, file, settings in [
        ("onnxruntime", "s1.onnx", {}),
        ("openvino", "s1.xml", {"precision_hint": "f32"}),
    ]:
        variant = Variant("s1", str(tmp_path / file), 1.0)
        sel = Selector([variant], 1e9, runtime=runtime, threads=1, settings=settings)
        assert sel.input_shape == (1, 64, 56, 56) and sel.input_dtype == "float32"
        np.testing.assert_allclose(sel.infer(x), ref, rtol=1e-4, atol=1e-4, err_msg=runtime)


def test_cli_pins_to_the_cores_the_depths_were_timed_on(bundle, tmp_path):
    for n in DEPTHS:
        (tmp_path / f"{n}.tflite").symlink_to(bundle[0] / f"{n}.tflite")
    manifest = json.loads((bundle[0] / "manifest.json").read_text())
    for cores, ok in (([0], True), ([4096], False)):
        manifest["runtime"]["affinity"] = cores
        (tmp_path / "manifest.json").write_text(json.dumps(manifest))
        cli = [str(SELECTOR), str(tmp_path), "--budget-ms", "1e6", "--runs", "3"]
        proc = subprocess.run([sys.executable, *cli], capture_output=True, text=True)
        if ok:
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout.splitlines()[-1])["runs"] == 3
        else:
            assert proc.returncode == 2 and "runtime.affinity [4096]" in proc.stderr
