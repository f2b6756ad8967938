"""Transports against a real sshd on loopback and against this machine.

Both transports run the same checks (argv reaches the program verbatim, hostile file names,
timeouts, the agent protocol, the work dir), then SSH alone: host keys, client keys, refused
connections, ssh_config aliases and a connection that drops under a running agent.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import devices.transport
from devices.transport import (
    DeviceUnreachable,
    LineTooLong,
    LocalTransport,
    SSHTransport,
    Transport,
    TransportError,
)
from tests.sshd import SSHServer, free_port, keygen

PY = sys.executable  # the device is this machine, so the host's interpreter exists there too

ECHO_ARGV = "import json, sys; print(json.dumps(sys.argv[1:]))"
HEX_OF = "import sys, pathlib; print(pathlib.Path(sys.argv[1]).read_bytes().hex())"
UPPER_AGENT = (
    "import sys\n"
    "for line in sys.stdin:\n"
    "    print(line.rstrip('\\n').upper(), flush=True)\n"
    "sys.stderr.write('agent done\\n')\n"
    "sys.exit(7)\n"
)
HOSTILE_NAMES = [
    "a b.txt",
    "x'; touch PWNED; '.bin",
    "$(touch PWNED2)",
    "semi;colon`id`",
    "new\nline & | > <",
    '"dq" \\ back',
    "-rf",
    "*",
    "~",
]


@pytest.fixture(scope="module")
def sshd() -> Iterator[SSHServer]:
    with SSHServer() as server:
        yield server


def ssh(server: SSHServer, **kw: object) -> SSHTransport:
    """An SSHTransport to the test server; keyword arguments override the defaults."""
    args: dict = dict(
        host=server.host,
        port=server.port,
        user=server.user,
        key_file=server.client_key,
        known_hosts=server.known_hosts,
        connect_timeout=5.0,
    )
    args.update(kw)
    return SSHTransport(**args)


@pytest.fixture(params=["local", "ssh"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Transport]:
    root = tmp_path / "device"
    root.mkdir()
    if request.param == "local":
        t: Transport = LocalTransport(root=str(root))
    else:
        t = ssh(request.getfixturevalue("sshd"), remote_root=str(root))
    with t:
        yield t


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def running(token: str) -> list[str]:
    """Processes on this machine whose command line contains `token`."""
    found = subprocess.run(["pgrep", "-af", token], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


# -- both transports ---------------------------------------------------------------------------


def test_run_returns_output_and_exit_code(transport: Transport) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    result = transport.run([PY, "-c", code])
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert transport.run([PY, "-c", "pass"]).returncode == 0


def test_missing_program_is_exit_code_127(transport: Transport) -> None:
    result = transport.run(["/nonexistent/hurricane-program", "x"])
    assert result.returncode == 127
    assert "hurricane-program" in result.stderr


def test_argv_reaches_the_program_verbatim(transport: Transport) -> None:
    args = [
        "two words",
        "it's",
        '"double"',
        "$(touch PWNED3)",
        "`id`",
        "$HOME",
        "a;b|c&d",
        "line1\nline2",
        "",
        "*",
        "~",
        "-n",
        "back\\slash",
        "tab\there",
        "ünïcode",
    ]
    result = transport.run([PY, "-c", ECHO_ARGV, *args])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == args


def test_stdin_and_large_output_do_not_deadlock(transport: Transport) -> None:
    data = os.urandom(3 << 20)
    code = (
        "import sys, hashlib\n"
        "data = sys.stdin.buffer.read()\n"
        "sys.stderr.write('e' * (2 << 20))\n"
        "sys.stdout.write(hashlib.sha256(data).hexdigest() + 'o' * (2 << 20))\n"
    )
    result = transport.run([PY, "-c", code], timeout=30, stdin=data)
    assert result.returncode == 0
    assert result.stdout == hashlib.sha256(data).hexdigest() + "o" * (2 << 20)
    assert result.stderr == "e" * (2 << 20)


def test_hostile_file_names(transport: Transport, tmp_path: Path) -> None:
    places = [Path.cwd(), Path.home(), tmp_path, Path(transport.workdir())]
    for place in places:
        for bad in ("PWNED", "PWNED2"):
            assert not (place / bad).exists(), f"stale {place / bad}"
    for i, name in enumerate(HOSTILE_NAMES):
        payload = bytes([i]) + name.encode() + os.urandom(16)
        local = tmp_path / f"payload{i}"
        local.write_bytes(payload)
        remote = transport.put(local, name)
        assert remote == f"{transport.workdir()}/{name}"
        result = transport.run([PY, "-c", HEX_OF, remote])
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == payload.hex()
    on_device = set(os.listdir(transport.workdir()))  # the device is this machine
    assert on_device == set(HOSTILE_NAMES)
    for place in places:
        for bad in ("PWNED", "PWNED2", "PWNED3"):
            assert not (place / bad).exists(), f"a name ran a command: {place / bad}"


@pytest.mark.parametrize("name", ["../escape", "a/b", "/abs", "..", ".", "", "nul\0byte"])
def test_names_with_slash_or_dotdot_are_rejected(transport: Transport, name: str) -> None:
    local = Path(__file__)
    with pytest.raises(TransportError) as exc:
        transport.put(local, name)
    one_line(exc)


def test_workdir_is_created_and_removed(transport: Transport, tmp_path: Path) -> None:
    workdir = transport.workdir()
    assert transport.workdir() == workdir, "one work dir per run"
    assert Path(workdir).name.startswith("hurricane-run-")
    assert Path(workdir).parent == tmp_path / "device"
    probe = transport.run([PY, "-c", "import os, sys; print(os.path.isdir(sys.argv[1]))", workdir])
    assert probe.stdout.strip() == "True"
    local = tmp_path / "f"
    local.write_bytes(b"x")
    transport.put(local, "model.bin")
    transport.close()
    assert not Path(workdir).exists()
    assert (tmp_path / "device").is_dir(), "only the run's own folder is removed"


def test_run_timeout_kills_the_command(transport: Transport) -> None:
    token = f"hurricane-timeout-{os.getpid()}-{time.monotonic_ns()}"
    code = "import sys, time; time.sleep(30)"
    start = time.monotonic()
    with pytest.raises(TransportError) as exc:
        transport.run([PY, "-c", code, token], timeout=0.5)
    assert time.monotonic() - start < 5
    message = one_line(exc)
    assert "0.5 s" in message and shlex.quote(PY) in message
    deadline = time.monotonic() + 3
    while running(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(token) == [], "the timed-out command is still running"


def test_agent_exchanges_lines(transport: Transport) -> None:
    conn = transport.connection if isinstance(transport, SSHTransport) else None
    agent = transport.start([PY, "-c", UPPER_AGENT])
    assert agent.alive
    for i in range(50):
        agent.send(f"line {i} with 'quotes' and $(x)")
    replies = [agent.readline(timeout=10) for _ in range(50)]
    assert replies == [f"LINE {i} WITH 'QUOTES' AND $(X)" for i in range(50)]
    with pytest.raises(TransportError) as exc:
        agent.readline(timeout=0.3)
    assert "no line within 0.3 s" in one_line(exc)
    assert agent.close() == 7
    assert not agent.alive
    assert agent.stderr_text() == "agent done\n"
    assert agent.readline(timeout=1) is None
    if isinstance(transport, SSHTransport):
        assert transport.connection is conn and conn is not None and conn.is_active()
        assert transport.connections_opened == 1


def test_agent_eof_and_stuck_agent_is_killed(transport: Transport) -> None:
    quitter = transport.start([PY, "-c", "import sys; print('bye'); sys.exit(0)"])
    assert quitter.readline(timeout=10) == "bye"
    assert quitter.readline(timeout=10) is None
    assert quitter.close() == 0

    token = f"hurricane-stuck-{os.getpid()}-{time.monotonic_ns()}"
    stuck = transport.start([PY, "-c", "import time; time.sleep(60)", token])
    start = time.monotonic()
    code = stuck.close(timeout=0.3)
    assert time.monotonic() - start < 5
    assert code is None or code < 0, "killed by a signal, not a normal exit"
    deadline = time.monotonic() + 3
    while running(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running(token) == []


LONG_LINES = (
    "import sys\n"
    "for n in map(int, sys.argv[1:]):\n"
    '    sys.stdout.write(\'{"id": "item-%d", "pad": "\' % n + \'x\' * n + \'"}\\n\')\n'
    "    sys.stdout.write('after %d\\n' % n)\n"
    "sys.stdout.flush()\n"
)


def wire(n: int) -> int:
    return len(json.dumps({"id": f"item-{n}", "pad": "x" * n}))


def test_a_line_over_the_limit_is_refused_and_the_next_one_read(
    transport: Transport, monkeypatch
) -> None:
    limit = 1 << 20
    monkeypatch.setattr(devices.transport, "MAX_LINE", limit)
    sizes = [limit - 40, limit + 1, 20 * limit]  # just under, just over, far over
    agent = transport.start([PY, "-c", LONG_LINES, *map(str, sizes)])
    line = agent.readline(timeout=30)
    assert line is not None and len(line) == wire(sizes[0]) <= limit
    assert agent.readline(timeout=30) == f"after {sizes[0]}"
    for n in sizes[1:]:
        with pytest.raises(LineTooLong) as exc:
            agent.readline(timeout=30)
        assert exc.value.size == wire(n) and exc.value.head.startswith(f'{{"id": "item-{n}"')
        assert f"over the limit of {limit} bytes" in one_line(exc)
        assert agent.readline(timeout=30) == f"after {n}"
    assert agent.readline(timeout=10) is None
    agent.close()


# -- SSH only ----------------------------------------------------------------------------------


def test_unknown_host_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    with pytest.raises(TransportError) as exc:
        ssh(sshd, known_hosts=known).open()
    message = one_line(exc)
    assert "known_hosts" in message and "trust_on_first_use" in message
    assert "ssh-keyscan" in message and f"[127.0.0.1]:{sshd.port}" in message
    assert known.read_text() == "", "a refused key must not be recorded"


def test_trust_on_first_use_records_the_key(sshd: SSHServer, tmp_path: Path) -> None:
    known = tmp_path / "new" / "known_hosts"  # neither the file nor its folder exist yet
    with ssh(sshd, known_hosts=known, trust_on_first_use=True) as t:
        assert t.run(["true"]).returncode == 0
    assert known.read_text().split() == sshd.host_pubkey_line.split()
    with ssh(sshd, known_hosts=known) as t:  # now known: no opt-in needed
        assert t.run(["true"]).returncode == 0
    assert len(known.read_text().splitlines()) == 1


def test_changed_host_key_is_refused_even_with_tofu(sshd: SSHServer, tmp_path: Path) -> None:
    other = keygen(tmp_path / "impostor").split()
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.port} {other[0]} {other[1]}\n")
    before = known.read_text()
    for tofu in (False, True):
        with pytest.raises(TransportError) as exc:
            ssh(sshd, known_hosts=known, trust_on_first_use=tofu).open()
        message = one_line(exc)
        assert "CHANGED" in message and "man-in-the-middle" in message
    assert known.read_text() == before


@pytest.mark.parametrize("mode", [0o666, 0o644, 0o640], ids=oct)
def test_a_key_others_can_read_is_refused_as_openssh_does(
    sshd: SSHServer, tmp_path: Path, mode: int
) -> None:
    key = tmp_path / "key"
    key.write_bytes(sshd.client_key.read_bytes())
    key.chmod(mode)
    with pytest.raises(TransportError) as exc:
        ssh(sshd, key_file=key).open()
    message = one_line(exc)
    assert f"mode {mode:04o}" in message and f"chmod 600 {key}" in message
    key.chmod(0o600)
    with ssh(sshd, key_file=key) as t:
        assert t.run(["true"]).returncode == 0


def test_default_keys_others_can_read_are_skipped(
    sshd: SSHServer, tmp_path: Path, monkeypatch
) -> None:
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = home / ".ssh" / "id_ed25519"
    key.write_bytes(sshd.client_key.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    key.chmod(0o644)
    with pytest.raises(TransportError) as exc:
        ssh(sshd, key_file=None).open()
    assert "authentication" in one_line(exc)
    key.chmod(0o600)
    with ssh(sshd, key_file=None) as t:
        assert t.run(["true"]).returncode == 0


def test_a_password_only_server_is_not_told_to_add_a_key() -> None:
    options = {"PubkeyAuthentication": "no", "PasswordAuthentication": "yes"}
    with SSHServer(options) as server:
        with pytest.raises(TransportError) as exc:
            ssh(server).open()
    message = one_line(exc)
    assert "offers no public-key login (it allows: password" in message
    assert "authorized_keys" not in message


def test_wrong_client_key_is_refused(sshd: SSHServer, tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    keygen(stranger)
    with pytest.raises(TransportError) as exc:
        ssh(sshd, key_file=stranger).open()
    message = one_line(exc)
    assert "authentication" in message and str(stranger) in message
    secret = stranger.read_text().splitlines()[1]  # the first line of the key's base64 body
    assert "PRIVATE KEY" not in message and secret not in message
    with pytest.raises(TransportError):
        ssh(sshd, key_file=tmp_path / "missing").open()


def test_connection_refused_names_host_and_port(tmp_path: Path) -> None:
    port = free_port()
    key = tmp_path / "key"
    keygen(key)
    start = time.monotonic()
    with pytest.raises(DeviceUnreachable) as exc:
        SSHTransport("127.0.0.1", port, key_file=key, connect_timeout=1.0).open()
    assert time.monotonic() - start < 3
    assert f"127.0.0.1:{port}" in one_line(exc)


def test_host_alias_from_ssh_config(sshd: SSHServer, tmp_path: Path) -> None:
    config = sshd.write_ssh_config(tmp_path / "ssh_config", "mydev")
    with SSHTransport("mydev", ssh_config=config, known_hosts=sshd.known_hosts) as t:
        assert (t.host, t.port, t.user) == ("127.0.0.1", sshd.port, sshd.user)
        assert t.run([PY, "-c", "print('via alias')"]).stdout == "via alias\n"


def test_lost_connection_is_reported_and_open_reconnects(sshd: SSHServer) -> None:
    with ssh(sshd) as t:
        agent = t.start([PY, "-c", UPPER_AGENT])
        agent.send("ping")
        assert agent.readline(timeout=10) == "PING"
        assert sshd.drop_connections() >= 1
        with pytest.raises(DeviceUnreachable) as exc:
            agent.readline(timeout=10)
        assert "open()" in one_line(exc)
        with pytest.raises(DeviceUnreachable):
            t.run(["true"])
        t.open()
        assert t.connections_opened == 2
        assert t.run([PY, "-c", "print(1)"]).stdout == "1\n"
