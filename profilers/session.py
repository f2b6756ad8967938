"""One device, one connection, one long-lived agent: ship artifacts and collect timings."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from devices.artifacts import Artifact
from devices.spec import DeviceSpec
from devices.transport import (
    AgentProcess,
    LocalTransport,
    SSHTransport,
    Transport,
    TransportError,
)
from hurricane.errors import UserError

AGENT_NAME = "hurricane_agent.py"


def agent_source() -> Path:
    return Path(str(resources.files("profilers") / "agent" / "agent.py"))


def transport_for(spec: DeviceSpec) -> Transport:
    t = spec.transport
    if t.type == "local":
        return LocalTransport()
    if t.host is None:  # read_spec requires one for ssh; a spec built in code may lack it
        raise UserError(f"{spec.name}: an ssh transport needs a host")
    return SSHTransport(
        t.host,
        port=t.port,
        user=t.user,
        key_file=t.key_file,
        known_hosts=t.known_hosts,
        trust_on_first_use=t.trust_on_first_use,
        connect_timeout=t.connect_timeout_s,
        ssh_config=t.ssh_config,
        remote_root=spec.workdir,
    )


class AgentCrashed(TransportError):
    """The agent process ended in the middle of a batch (a segfault in a runtime, a reboot)."""

    def __init__(self, message: str, pending: list[str]) -> None:
        super().__init__(message)
        self.pending = pending
        self.partial: list[dict[str, Any]] = []  # results that arrived before the crash


class InferenceFailed(UserError):
    """The agent could not run a model on the given inputs (a wrong input shape, a model the
    runtime refuses); the message carries the agent's one-line reason."""


class AgentSession:
    """Opens the transport, uploads the agent once, and keeps it running across batches.

    The local device goes through the same steps (a work dir, a copy of the agent, a
    subprocess), so what runs here is what runs on a board."""

    def __init__(self, spec: DeviceSpec, transport: Transport | None = None) -> None:
        self.spec = spec
        self.transport = transport or transport_for(spec)
        self.proc: AgentProcess | None = None
        self.fingerprint: dict[str, Any] = {}
        self._uploaded: set[str] = set()
        self.timeout = spec.transport.command_timeout_s
        self.last_infer: dict[str, Any] = {}  # the latest infer reply, less its output data

    def __enter__(self) -> AgentSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.transport.open()
        self.start_agent()

    def start_agent(self) -> None:
        remote = self.transport.put(agent_source(), AGENT_NAME)
        argv = [self.spec.python_command(), "-u", remote]
        if self.spec.affinity:
            argv += ["--affinity", ",".join(map(str, self.spec.affinity))]
        self.proc = self.transport.start(argv)
        hello = self.request({"cmd": "hello"}, "hello")
        self.fingerprint = hello["fingerprint"]
        self.fingerprint["agent_python"] = hello.get("python")

    def restart_agent(self) -> None:
        if self.proc is not None:
            self.proc.close()
        self.start_agent()

    def close(self) -> None:
        if self.proc is not None and self.proc.alive:
            try:
                self.proc.send(json.dumps({"cmd": "quit"}))
            except TransportError:
                pass
            self.proc.close()
        self.proc = None
        self.transport.close()

    def _agent(self) -> AgentProcess:
        """The running agent; the session must be open."""
        if self.proc is None:
            raise RuntimeError(f"{self.spec.name}: no profiling agent running; open() the session")
        return self.proc

    def _read(self) -> dict[str, Any] | None:
        line = self._agent().readline(timeout=self.timeout)
        return None if line is None else json.loads(line)

    def request(self, msg: dict[str, Any], expect: str) -> dict[str, Any]:
        self._agent().send(json.dumps(msg))
        reply = self._read()
        if reply is None or reply.get("type") != expect:
            raise TransportError(
                f"{self.spec.name}: the profiling agent did not answer {msg['cmd']!r} "
                f"({reply!r}); its stderr: {self._agent().stderr_text()[-300:]!r}"
            )
        return reply

    def upload(self, art: Artifact) -> str:
        """Ship an artifact (once per session) and return its path on the device."""
        for f in art.files:
            if f.name not in self._uploaded:
                self.transport.put(f, f.name)
                self._uploaded.add(f.name)
        return f"{self.transport.workdir()}/{art.path.name}"

    def measure(self, items: list[tuple[str, Artifact]], seed: int = 0) -> Iterator[dict[str, Any]]:
        """Time a batch in one agent command; yield each item's result or error line."""
        m = self.spec.measure
        payload = {
            "cmd": "measure",
            "runtime": self.spec.runtime.name,
            "options": self.spec.runtime.agent_options(),
            "items": [{"id": i, "path": self.upload(a)} for i, a in items],
            "warmup": m.warmup,
            "rounds": m.rounds,
            "runs": m.runs,
            "min_round_ms": m.min_round_ms,
            "seed": seed,
        }
        self._agent().send(json.dumps(payload))
        pending = [i for i, _ in items]
        while True:
            line = self._read()
            if line is None:
                raise self._crashed("during a batch", pending)
            kind = line.get("type")
            if kind in ("result", "error") and line.get("id") in pending:
                pending.remove(line["id"])
                yield line
            elif kind == "done":
                return

    def _crashed(self, when: str, pending: list[str]) -> AgentCrashed:
        proc = self._agent()
        code = proc.close()
        return AgentCrashed(
            f"{self.spec.name}: the profiling agent ended {when} (exit code {code}); stderr: "
            f"{proc.stderr_text()[-300:]!r}",
            pending,
        )

    def infer(self, item_id: str, art: Artifact, batch: np.ndarray) -> np.ndarray:
        """Run an artifact on `batch` (N samples, float32) on the device with the device's own
        runtime, loaded as `measure` loads it; return its outputs stacked along axis 0.

        This is how a handoff checks that an exported model computes what PyTorch computes,
        where it will run: a converter, a quantizer or a delegate can change the numbers, and
        only the device's runtime shows it. Raises InferenceFailed with the agent's reason, or
        AgentCrashed if the agent dies on the way."""
        data = np.ascontiguousarray(batch, dtype="<f4")
        payload = {
            "cmd": "infer",
            "id": item_id,
            "runtime": self.spec.runtime.name,
            "options": self.spec.runtime.agent_options(),
            "path": self.upload(art),
            "input": {
                "shape": list(data.shape),
                "dtype": "float32",
                "data": base64.b64encode(data.tobytes()).decode("ascii"),
            },
        }
        self._agent().send(json.dumps(payload))
        while True:
            line = self._read()
            if line is None:
                raise self._crashed(f"while running {item_id}", [item_id])
            kind = line.get("type")
            if kind == "error" and line.get("id") in (item_id, None):
                raise InferenceFailed(
                    f"{self.spec.name}: running {item_id} on the device failed: {line['error']}"
                )
            if kind == "outputs" and line.get("id") == item_id:
                break
        out = line.get("output") or {}
        try:
            raw = base64.b64decode(out["data"], validate=True)
            result = np.frombuffer(raw, dtype="<f4").reshape(out["shape"]).astype(np.float32)
        except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
            raise TransportError(
                f"{self.spec.name}: the profiling agent sent a malformed output for {item_id} "
                f"({type(exc).__name__}: {exc}); check the agent matches this host's version"
            ) from None
        self.last_infer = {k: v for k, v in line.items() if k != "output"}
        self.last_infer["output_shape"] = list(result.shape)
        return result
