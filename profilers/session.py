"""One device, one connection, one long-lived agent: ship artifacts and collect timings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from devices.convert import Artifact
from devices.spec import DeviceSpec
from devices.transport import LocalTransport, SSHTransport, Transport, TransportError

AGENT_NAME = "hurricane_agent.py"


def agent_source() -> Path:
    return Path(str(resources.files("profilers") / "agent" / "agent.py"))


def transport_for(spec: DeviceSpec) -> Transport:
    t = spec.transport
    if t.type == "local":
        return LocalTransport()
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


class AgentSession:
    """Opens the transport, uploads the agent once, and keeps it running across batches.

    The local device goes through the same steps (a work dir, a copy of the agent, a
    subprocess), so what runs here is what runs on a board."""

    def __init__(self, spec: DeviceSpec, transport: Transport | None = None) -> None:
        self.spec = spec
        self.transport = transport or transport_for(spec)
        self.proc = None
        self.fingerprint: dict[str, Any] = {}
        self._uploaded: set[str] = set()
        self.timeout = spec.transport.command_timeout_s

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

    def _read(self) -> dict[str, Any] | None:
        line = self.proc.readline(timeout=self.timeout)
        return None if line is None else json.loads(line)

    def request(self, msg: dict[str, Any], expect: str) -> dict[str, Any]:
        self.proc.send(json.dumps(msg))
        reply = self._read()
        if reply is None or reply.get("type") != expect:
            raise TransportError(
                f"{self.spec.name}: the profiling agent did not answer {msg['cmd']!r} "
                f"({reply!r}); its stderr: {self.proc.stderr_text()[-300:]!r}"
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
        self.proc.send(json.dumps(payload))
        pending = [i for i, _ in items]
        while True:
            line = self._read()
            if line is None:
                code = self.proc.close()
                raise AgentCrashed(
                    f"{self.spec.name}: the profiling agent ended during a batch (exit code "
                    f"{code}); stderr: {self.proc.stderr_text()[-300:]!r}",
                    pending,
                )
            kind = line.get("type")
            if kind in ("result", "error") and line.get("id") in pending:
                pending.remove(line["id"])
                yield line
            elif kind == "done":
                return
