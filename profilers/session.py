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
    LineTooLong,
    LocalTransport,
    SSHTransport,
    Transport,
    TransportError,
)
from hurricane.errors import UserError
from profilers.replies import BadReply, id_in_head, parse

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
        # Lines that could not be used and named no pending item: the engine reports them.
        self.bad_replies: list[str] = []

    def __enter__(self) -> AgentSession:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.transport.open()
        try:
            self.start_agent()
        except BaseException:
            self.close()  # removes the work dir the failed start made on the device
            raise

    def start_agent(self) -> None:
        remote = self.transport.put(agent_source(), AGENT_NAME)
        argv = [self.spec.python_command(), "-u", remote]
        if self.spec.affinity:
            argv += ["--affinity", ",".join(map(str, self.spec.affinity))]
        self.proc = self.transport.start(argv)
        hello = self.request({"cmd": "hello"}, "hello")
        if not isinstance(hello.get("fingerprint"), dict):
            raise TransportError(
                f"{self.spec.name}: the profiling agent's hello has no fingerprint "
                f"({str(hello)[:120]}); check that {argv[0]} runs Hurricane's agent"
            )
        self.fingerprint = hello["fingerprint"]
        self.fingerprint["agent_python"] = str(hello.get("python"))

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

    def _read(self) -> dict[str, Any] | BadReply | None:
        """The next line as a JSON object, a BadReply saying why it is not one, or None once
        the agent closed its output."""
        try:
            line = self._agent().readline(timeout=self.timeout)
        except LineTooLong as exc:
            return BadReply(str(exc), id_in_head(exc.head))
        return None if line is None else parse(line)

    def _unused(self, reason: str) -> None:
        self.bad_replies.append(reason)

    def request(self, msg: dict[str, Any], expect: str) -> dict[str, Any]:
        self._agent().send(json.dumps(msg))
        reply = self._read()
        if not isinstance(reply, dict) or reply.get("type") != expect:
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
            if isinstance(line, BadReply):
                if line.id in pending:
                    pending.remove(line.id)
                    yield {"type": "error", "id": line.id, "error": f"bad reply: {line.reason}"}
                else:
                    self._unused(line.reason)
                continue
            kind = line.get("type")
            if kind in ("result", "error"):
                if line.get("id") in pending:
                    pending.remove(line["id"])
                    yield line
                else:  # an id never asked for, or answered twice
                    self._unused(f"a {kind} for {line.get('id')!r:.80}, not pending in this batch")
            elif kind == "done":
                for item in pending:  # nothing came back for it: say so, do not drop it
                    yield {"type": "error", "id": item, "error": "the agent sent no reply for it"}
                return
            else:
                self._unused(f"a line of type {kind!r:.40} in a measure batch")

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
            if isinstance(line, BadReply):
                if line.id == item_id:
                    raise TransportError(f"{self.spec.name}: running {item_id}: {line.reason}")
                self._unused(line.reason)
                continue
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
