"""How the host reaches a device: ship files, run commands, talk to a long-lived agent.

Two transports share one interface: `LocalTransport` (subprocesses on this machine, the embedded
default) and `SSHTransport` (one persistent paramiko connection to a user's board or phone).
Commands are argv lists, never shell strings: sshd always hands a command to the user's login
shell, so over SSH every element is quoted with `shlex.quote` (remote shells are POSIX sh).
Host keys are checked against known_hosts; unknown keys are refused unless the user opts in to
trust-on-first-use, changed keys always. Key files and passphrases never reach a log or a message.
"""

from __future__ import annotations

import abc
import getpass
import io
import logging
import os
import queue
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Self, cast

import paramiko

from hurricane.errors import UserError

log = logging.getLogger(__name__)

RUN_PREFIX = "hurricane-run-"  # close() only ever deletes a folder whose name starts with this
_PID_MARK = b"hurricane-pid:"  # first stdout line of every SSH command: the pid to kill on timeout
_CHUNK = 65536
_STDERR_KEEP = 64 * 1024  # an agent's stderr is kept for error messages, not forever
# The longest stdout line an agent may write: a timing reply is a few kB, an inference's
# outputs a few hundred; anything longer is refused rather than buffered without end.
MAX_LINE = 8 * 1024 * 1024
_HEAD = 512  # what is kept of a refused line, to tell whose reply it was
_KILL_GRACE = 1.0  # seconds between SIGTERM and SIGKILL


class TransportError(UserError):
    """A device cannot be reached, or a command on it could not be run; says what to do."""


class DeviceUnreachable(TransportError):
    """The connection could not be made or was lost: worth retrying, unlike a refused key."""


class LineTooLong(TransportError):
    """An agent wrote a line over the limit; its start (``head``) may tell whose it was."""

    def __init__(self, message: str, head: str, size: int) -> None:
        super().__init__(message)
        self.head = head
        self.size = size


@dataclass(frozen=True)
class _Overflow:
    head: bytes
    size: int


class _CannotExec(TransportError):
    """A local program that does not exist or is not executable."""


@dataclass(frozen=True)
class RunResult:
    """What one finished command left: exit code (-1 if the device reported none) and output."""

    returncode: int
    stdout: str
    stderr: str


# -- small helpers -----------------------------------------------------------------------------


def _check_argv(argv: list[str]) -> list[str]:
    """Commands are non-empty lists of strings; NUL cannot cross exec() or the SSH protocol."""
    if isinstance(argv, str | bytes) or not argv:
        raise ValueError(f"argv must be a non-empty list of strings, not {argv!r}")
    argv = list(argv)
    for arg in argv:
        if not isinstance(arg, str):
            raise ValueError(f"argv elements must be strings, got {arg!r}")
        if "\0" in arg:
            raise ValueError(f"argv element {arg!r} contains NUL")
    return argv


def check_name(name: str) -> str:
    """A file name for the work dir: anything but '/', NUL, '', '.' and '..'."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name:
        raise TransportError(
            f"file name {name!r} cannot be used on the device: give a plain file name "
            "without '/' or NUL that is not '.' or '..'"
        )
    return name


def _describe(argv: list[str]) -> str:
    """A command as a user would type it, cut short for one-line messages."""
    text = shlex.join(argv).replace("\n", "\\n")
    return text if len(text) <= 200 else text[:197] + "..."


def _one_line(text: str, keep: int = 300) -> str:
    """The end of some output, flattened into one line for an error message."""
    text = " | ".join(part for part in text.strip().splitlines() if part.strip())
    return text if len(text) <= keep else "..." + text[-keep:]


def _stderr_note(text: str) -> str:
    return f"; its stderr: {_one_line(text)}" if text.strip() else ""


def _lost(where: str, argv: list[str]) -> DeviceUnreachable:
    return DeviceUnreachable(
        f"the connection to {where} was lost while running {_describe(argv)}; "
        "call open() to reconnect and start it again"
    )


# -- processes ---------------------------------------------------------------------------------


class _Process(abc.ABC):
    """One running command's pipes, wait and kill, whatever carries them."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None: ...

    @abc.abstractmethod
    def close_stdin(self) -> None: ...

    @abc.abstractmethod
    def read_stdout(self, n: int) -> bytes:
        """Block for output; b'' at end of file."""

    @abc.abstractmethod
    def read_stderr(self, n: int) -> bytes: ...

    @abc.abstractmethod
    def exited(self) -> bool: ...

    @abc.abstractmethod
    def wait(self, timeout: float) -> bool:
        """True once the command has exited, False if it is still running after `timeout`."""

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None: ...

    @abc.abstractmethod
    def kill(self) -> None:
        """SIGTERM the command's process group, SIGKILL it if it lingers."""

    @abc.abstractmethod
    def release(self) -> None: ...

    def lost(self) -> bool:
        """True when the command ended because the connection to the device went away."""
        return False


class _Drain:
    """Empties one pipe in a background thread, so a chatty command never blocks on it.

    In line mode each chunk is scanned once, so reading is linear in the bytes received; a
    line over ``max_line`` is not kept but reported as an ``_Overflow`` with its start."""

    def __init__(
        self,
        read: Callable[[int], bytes],
        lines: bool = False,
        keep: int = 0,
        max_line: int | None = None,
    ) -> None:
        self._read = read
        self._keep = keep
        self.max_line = MAX_LINE if max_line is None else max_line
        self._buf = bytearray()
        self._lock = threading.Lock()
        self.lines: queue.Queue[bytes | _Overflow | None] | None = queue.Queue() if lines else None
        self.done = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="hurricane-drain").start()

    def _loop(self) -> None:
        partial = bytearray()
        over: list[int] = []  # [bytes dropped] while inside an over-long line
        head = b""
        try:
            while True:
                try:
                    chunk = self._read(_CHUNK)
                except (OSError, EOFError, ValueError):
                    chunk = b""  # closed under us: same as end of file
                if not chunk:
                    break
                if self.lines is None:
                    with self._lock:
                        self._buf += chunk
                        if self._keep and len(self._buf) > self._keep:
                            del self._buf[: -self._keep]
                    continue
                start = 0
                while start <= len(chunk):
                    nl = chunk.find(b"\n", start)
                    piece = chunk[start:] if nl < 0 else chunk[start:nl]
                    if over:
                        over[0] += len(piece)
                    elif len(partial) + len(piece) > self.max_line:
                        head = bytes((partial + piece[:_HEAD])[:_HEAD])
                        over = [len(partial) + len(piece)]
                        partial.clear()
                    else:
                        partial += piece
                    if nl < 0:
                        break
                    if over:
                        self.lines.put(_Overflow(head, over[0]))
                        over = []
                    else:
                        self.lines.put(bytes(partial))
                        partial.clear()
                    start = nl + 1
        finally:
            if self.lines is not None:
                if over:
                    self.lines.put(_Overflow(head, over[0]))
                elif partial:
                    self.lines.put(bytes(partial))
                self.lines.put(None)
            self.done.set()

    def data(self) -> bytes:
        with self._lock:
            return bytes(self._buf)


class _LocalProcess(_Process):
    """A subprocess in its own session, so a kill reaches everything it started."""

    def __init__(self, argv: list[str]) -> None:
        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def write(self, data: bytes) -> None:
        assert self.popen.stdin is not None
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        try:
            if self.popen.stdin is not None:
                self.popen.stdin.close()
        except OSError:
            pass

    @staticmethod
    def _read(pipe: io.BufferedReader, n: int) -> bytes:
        data = pipe.read1(n)
        if not data:
            pipe.close()  # only the draining thread reads it, so closing here is race-free
        return data

    # stdout and stderr are PIPEs with the default buffering, so Popen made them BufferedReaders
    # (typeshed types them as IO[bytes] | None).
    def read_stdout(self, n: int) -> bytes:
        return self._read(cast(io.BufferedReader, self.popen.stdout), n)

    def read_stderr(self, n: int) -> bytes:
        return self._read(cast(io.BufferedReader, self.popen.stderr), n)

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def wait(self, timeout: float) -> bool:
        try:
            self.popen.wait(timeout=max(timeout, 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.popen.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            if self.wait(_KILL_GRACE):
                return

    def release(self) -> None:
        self.close_stdin()


class _SSHProcess(_Process):
    """A command on one SSH channel; its login shell prints its pid, then execs the argv."""

    def __init__(self, transport: SSHTransport, argv: list[str]) -> None:
        self._transport = transport
        self.chan = transport._session()
        self.pid: int | None = None
        self._pid_known = threading.Event()
        try:
            # `exec` keeps the shell's pid, and sshd made that shell a session leader, so the
            # pid names the whole process group that kill() has to stop.
            self.chan.exec_command(f"echo {_PID_MARK.decode()}$$; exec {shlex.join(argv)}")
        except (paramiko.SSHException, OSError, EOFError) as exc:
            self.chan.close()
            raise DeviceUnreachable(
                f"cannot start {_describe(argv)} on {transport.where}: {exc}; "
                "check the connection and call open() again"
            ) from None

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def close_stdin(self) -> None:
        try:
            self.chan.shutdown_write()
        except (OSError, EOFError, paramiko.SSHException):
            pass

    def read_stdout(self, n: int) -> bytes:
        if self._pid_known.is_set():
            return self.chan.recv(n)
        buf = b""
        try:
            while True:
                chunk = self.chan.recv(n)
                if not chunk:
                    return buf  # the shell died before printing its pid: nothing to kill
                buf += chunk
                start = buf.find(_PID_MARK)
                end = buf.find(b"\n", start) if start >= 0 else -1
                if end >= 0:
                    # Anything before the mark was printed by the user's shell start-up files.
                    self.pid = int(buf[start + len(_PID_MARK) : end])
                    self._pid_known.set()
                    rest = buf[end + 1 :]
                    return rest if rest else self.chan.recv(n)
        finally:
            self._pid_known.set()  # also when the shell died first: kill() must not wait

    def read_stderr(self, n: int) -> bytes:
        return self.chan.recv_stderr(n)

    def exited(self) -> bool:
        return self.chan.exit_status_ready()

    def wait(self, timeout: float) -> bool:
        return self.chan.status_event.wait(max(timeout, 0.0))

    @property
    def returncode(self) -> int | None:
        # paramiko leaves -1 when the device sent no exit status (e.g. killed by a signal)
        if not self.chan.exit_status_ready() or self.chan.exit_status == -1:
            return None
        return self.chan.exit_status

    def kill(self) -> None:
        self._pid_known.wait(_KILL_GRACE)
        if self.pid is not None:
            for sig in ("TERM", "KILL"):
                if self.exited():
                    break
                self._transport._signal(self.pid, sig)
                self.wait(_KILL_GRACE)
        self.chan.close()

    def release(self) -> None:
        self.chan.close()

    def lost(self) -> bool:
        if self.returncode is not None:
            return False
        conn = self.chan.get_transport()
        # paramiko closes the channels a moment before it marks the connection inactive.
        for _ in range(20):
            if conn is None or not conn.is_active():
                return True
            time.sleep(0.01)
        return False


class AgentProcess:
    """A long-lived command spoken to in lines, like the on-device profiling agent."""

    def __init__(self, proc: _Process, argv: list[str], where: str) -> None:
        self._proc = proc
        self.argv = argv
        self.where = where
        self._out = _Drain(proc.read_stdout, lines=True)
        self._err = _Drain(proc.read_stderr, keep=_STDERR_KEEP)
        self._eof = False
        self._closed = False
        self._send_lock = threading.Lock()

    def send(self, line: str) -> None:
        """Write one line (a newline is added) to the agent's stdin and flush it."""
        if "\n" in line:
            raise ValueError("send() takes one line without newlines")
        try:
            with self._send_lock:
                self._proc.write(line.encode() + b"\n")
        except (OSError, EOFError, ValueError, paramiko.SSHException):
            self._raise_if_lost()
            raise TransportError(
                f"{_describe(self.argv)} on {self.where} stopped reading its input"
                f"{self._exit_note()}{_stderr_note(self.stderr_text())}"
            ) from None

    def readline(self, timeout: float) -> str | None:
        """The next stdout line without its newline; None once the agent closed its output."""
        if self._eof:
            return None
        assert self._out.lines is not None
        try:
            line = self._out.lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TransportError(
                f"{_describe(self.argv)} on {self.where} wrote no line within {timeout:g} s"
                f"{_stderr_note(self.stderr_text())}; raise the timeout or check the agent"
            ) from None
        if line is None:
            self._eof = True
            self._proc.wait(1.0)  # let the exit status arrive before telling EOF from a loss
            self._raise_if_lost()
            return None
        if isinstance(line, _Overflow):
            raise LineTooLong(
                f"{_describe(self.argv)} on {self.where} wrote a line of {line.size} bytes, "
                f"over the limit of {self._out.max_line} bytes; it was dropped",
                line.head.decode("utf-8", "replace"),
                line.size,
            )
        return line.decode("utf-8", "replace")

    def stderr_text(self) -> str:
        """What the agent wrote to stderr so far (the last 64 KiB), for error messages."""
        return self._err.data().decode("utf-8", "replace")

    @property
    def alive(self) -> bool:
        return not self._closed and not self._proc.exited()

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def close(self, timeout: float = 5.0) -> int | None:
        """Close stdin, give the agent `timeout` s to finish, kill it otherwise; its exit code."""
        if not self._closed:
            self._closed = True
            self._proc.close_stdin()
            if not self._proc.wait(timeout):
                self._proc.kill()
                self._proc.wait(timeout)
            self._err.done.wait(1.0)
            self._proc.release()
        return self._proc.returncode

    def _raise_if_lost(self) -> None:
        if self._proc.lost():
            raise _lost(self.where, self.argv)

    def _exit_note(self) -> str:
        code = self._proc.returncode
        return f" (exit code {code})" if code is not None else ""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- transports --------------------------------------------------------------------------------


class Transport(abc.ABC):
    """How the host reaches one device: a work dir, files into it, commands and agents."""

    where: str = "the device"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._workdir: str | None = None
        self._agents: weakref.WeakSet[AgentProcess] = weakref.WeakSet()

    @abc.abstractmethod
    def open(self) -> None:
        """Connect; calling it again is harmless (and reconnects a lost connection)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the agents, remove the work dir (if this transport made one), disconnect."""

    @abc.abstractmethod
    def workdir(self) -> str:
        """This run's own folder on the device, made on first call, removed by close()."""

    @abc.abstractmethod
    def put(self, local: Path, name: str) -> str:
        """Copy a local file into workdir() as `name`; the path on the device."""

    @abc.abstractmethod
    def _spawn(self, argv: list[str]) -> _Process: ...

    def run(self, argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> RunResult:
        """Run one command to completion; killed and TransportError after `timeout` s."""
        argv = _check_argv(argv)
        proc = self._spawn(argv)
        out = _Drain(proc.read_stdout)
        err = _Drain(proc.read_stderr)

        def feed() -> None:
            try:
                if stdin:
                    proc.write(stdin)
            except (OSError, EOFError, ValueError, paramiko.SSHException):
                pass  # it stopped reading: its exit code and stderr will say why
            finally:
                proc.close_stdin()

        threading.Thread(target=feed, daemon=True, name="hurricane-stdin").start()
        deadline = time.monotonic() + timeout
        finished = (
            proc.wait(timeout)
            and out.done.wait(max(deadline - time.monotonic(), 0.0))
            and err.done.wait(max(deadline - time.monotonic(), 0.0))
        )
        if not finished:
            proc.kill()
            proc.release()
            raise TransportError(
                f"command {_describe(argv)} did not finish within {timeout:g} s on {self.where} "
                f"and was killed{_stderr_note(err.data().decode('utf-8', 'replace'))}; "
                "raise the timeout or check the command"
            )
        proc.release()
        code = proc.returncode
        if proc.lost():
            raise _lost(self.where, argv)
        return RunResult(
            -1 if code is None else code,
            out.data().decode("utf-8", "replace"),
            err.data().decode("utf-8", "replace"),
        )

    def start(self, argv: list[str]) -> AgentProcess:
        """Start a long-lived command to exchange lines with; close() stops it."""
        argv = _check_argv(argv)
        agent = AgentProcess(self._spawn(argv), argv, self.where)
        self._agents.add(agent)
        return agent

    def _close_agents(self) -> None:
        for agent in list(self._agents):
            agent.close(timeout=2.0)

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalTransport(Transport):
    """This machine as the device: subprocesses with argv lists, a temporary work dir."""

    where = "this machine"

    def __init__(self, root: str | None = None) -> None:
        super().__init__()
        self.root = root

    def open(self) -> None:
        pass

    def close(self) -> None:
        with self._lock:
            self._close_agents()
            workdir, self._workdir = self._workdir, None
            if workdir and Path(workdir).name.startswith(RUN_PREFIX):
                shutil.rmtree(workdir, ignore_errors=True)

    def workdir(self) -> str:
        with self._lock:
            if self._workdir is None:
                try:
                    self._workdir = tempfile.mkdtemp(prefix=RUN_PREFIX, dir=self.root)
                except OSError as exc:
                    raise TransportError(
                        f"cannot create a work dir under {self.root or tempfile.gettempdir()}: "
                        f"{exc.strerror}; pass a writable root folder"
                    ) from None
            return self._workdir

    def put(self, local: Path, name: str) -> str:
        check_name(name)
        local = Path(local)
        if not local.is_file():
            raise TransportError(f"cannot copy {local}: no such file")
        dest = Path(self.workdir()) / name
        try:
            shutil.copy(local, dest)
        except OSError as exc:
            raise TransportError(f"cannot copy {local} to {dest}: {exc.strerror}") from None
        return str(dest)

    def _spawn(self, argv: list[str]) -> _Process:
        try:
            return _LocalProcess(argv)
        except OSError as exc:
            raise _CannotExec(
                f"cannot run {argv[0]!r} on this machine: {exc.strerror}; check the program path"
            ) from None

    def run(self, argv: list[str], timeout: float = 60.0, stdin: bytes | None = None) -> RunResult:
        """As Transport.run; a missing program gives exit code 127, as a shell over SSH does."""
        try:
            return super().run(argv, timeout, stdin)
        except _CannotExec as exc:
            return RunResult(127, "", str(exc))


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse an unknown host key unless the user opted in to trust it on first use."""

    def __init__(self, known_hosts: Path, trust_on_first_use: bool, host: str, port: int) -> None:
        self.known_hosts = known_hosts
        self.tofu = trust_on_first_use
        self.host = host
        self.port = port

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        fingerprint = f"{key.get_name()} {key.fingerprint}"
        if not self.tofu:
            scan = shlex.join(["ssh-keyscan", "-p", str(self.port), self.host])
            raise TransportError(
                f"the host key of {hostname} ({fingerprint}) is not in known_hosts file "
                f"{self.known_hosts}; check the fingerprint on the device and add it "
                f"(`{scan} >> {shlex.quote(str(self.known_hosts))}`), or pass "
                "trust_on_first_use=True to accept and record it"
            )
        line = f"{hostname} {key.get_name()} {key.get_base64()}\n"
        try:
            self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as f:
                f.write(line)
        except OSError as exc:
            raise TransportError(
                f"cannot record the host key of {hostname} in {self.known_hosts}: "
                f"{exc.strerror}; make the file writable"
            ) from None
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning(
            "trusted the new host key of %s (%s) on first use; recorded in %s",
            hostname,
            fingerprint,
            self.known_hosts,
        )


# The identity files ssh tries when none is configured (ssh(1), -i), in its order.
_DEFAULT_KEYS = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk", "id_dsa")


def _mode(path: str) -> str:
    return oct(os.stat(path).st_mode & 0o777)[2:].zfill(4)


def _private(path: str) -> bool:
    """What OpenSSH asks of a private key it owns: no access for group or others."""
    st = os.stat(path)
    return st.st_uid != os.getuid() or not st.st_mode & 0o077


def _ssh_config_for(host: str, ssh_config: str | Path | None) -> dict:
    """What ssh_config (the given file, else ~/.ssh/config if any) says about `host`."""
    path = Path(ssh_config).expanduser() if ssh_config else Path("~/.ssh/config").expanduser()
    if not path.is_file():
        if ssh_config:
            raise TransportError(f"ssh_config file {path} does not exist; fix the path")
        return {}
    try:
        return dict(paramiko.SSHConfig.from_path(str(path)).lookup(host))
    except (OSError, paramiko.SSHException, ValueError) as exc:
        raise TransportError(f"cannot read ssh_config file {path}: {exc}; fix the file") from None


class SSHTransport(Transport):
    """A device over SSH: one persistent connection, key authentication, verified host key."""

    def __init__(
        self,
        host: str,
        port: int | None = None,
        user: str | None = None,
        key_file: str | Path | None = None,
        known_hosts: str | Path | None = None,
        trust_on_first_use: bool = False,
        connect_timeout: float = 10.0,
        ssh_config: str | Path | None = None,
        remote_root: str = "/tmp",
    ) -> None:
        """`host` may be a Host alias of ssh_config; explicit arguments win over its values.

        port defaults to the config's Port, else 22; key_file to its IdentityFile, else the
        SSH agent and ~/.ssh/id_* keys; known_hosts to its UserKnownHostsFile, else
        ~/.ssh/known_hosts.
        """
        super().__init__()
        config = _ssh_config_for(host, ssh_config)
        if config.get("proxyjump"):
            raise TransportError(
                f"ssh_config sets ProxyJump for {host}, which is not supported; use "
                "`ProxyCommand ssh -W %h:%p <jump host>` instead"
            )
        self.alias = host
        self.host = config.get("hostname", host)
        self.port = int(port if port is not None else config.get("port", 22))
        self.user = user or config.get("user") or getpass.getuser()
        if key_file is not None:
            self.key_files = [str(Path(key_file).expanduser())]
        else:
            self.key_files = [str(Path(p).expanduser()) for p in config.get("identityfile", [])]
        if known_hosts is None:
            files = config.get("userknownhostsfile", "~/.ssh/known_hosts").split()
            known_hosts = files[0]
        self.known_hosts = Path(known_hosts).expanduser()
        self.trust_on_first_use = trust_on_first_use
        self.connect_timeout = connect_timeout
        self.remote_root = remote_root
        self._proxy_command = config.get("proxycommand")
        hostport = f"[{self.host}]" if ":" in self.host else self.host
        self.where = f"{self.user}@{hostport}:{self.port}"
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._sftp_lock = threading.Lock()
        self.connections_opened = 0

    # -- connection ------------------------------------------------------------------------

    @property
    def connection(self) -> paramiko.Transport | None:
        """The live paramiko connection every command, file and agent goes over, if any."""
        return self._client.get_transport() if self._client is not None else None

    def open(self) -> None:
        with self._lock:
            conn = self.connection
            if conn is not None and conn.is_active():
                return
            self._disconnect()
            self._client = self._connect()
            self.connections_opened += 1

    def _keys(self) -> tuple[list[str], bool]:
        """The key files to offer, and whether paramiko may add ~/.ssh keys of its own (never:
        the defaults are listed here, so a key others can read is skipped as ssh skips it)."""
        for k in self.key_files:
            if not Path(k).is_file():
                raise TransportError(f"key file {k} does not exist; pass the right key_file")
            if not _private(k):
                raise TransportError(
                    f"key file {k} is accessible by others (mode {_mode(k)}); OpenSSH refuses "
                    f"such a key, and so does Hurricane: run `chmod 600 {shlex.quote(k)}`"
                )
        if self.key_files:
            return self.key_files, False
        found = [
            str(p) for name in _DEFAULT_KEYS if (p := Path("~/.ssh", name).expanduser()).is_file()
        ]
        for k in found:
            if not _private(k):
                log.warning("ignoring %s: accessible by others (mode %s), as ssh does", k, _mode(k))
        return [k for k in found if _private(k)], False

    def _connect(self) -> paramiko.SSHClient:
        key_files, look_for_keys = self._keys()
        client = paramiko.SSHClient()
        if self.known_hosts.is_file():
            try:
                client.load_host_keys(str(self.known_hosts))
            except (OSError, ValueError, paramiko.SSHException) as exc:
                raise TransportError(
                    f"cannot read known_hosts file {self.known_hosts}: {_one_line(str(exc))}; "
                    "fix or remove the file"
                ) from None
        client.set_missing_host_key_policy(
            _HostKeyPolicy(self.known_hosts, self.trust_on_first_use, self.host, self.port)
        )
        t = self.connect_timeout
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                key_filename=key_files or None,
                allow_agent=not self.key_files,
                look_for_keys=look_for_keys,
                timeout=t,
                banner_timeout=t,
                auth_timeout=t,
                channel_timeout=t,
                sock=paramiko.ProxyCommand(self._proxy_command) if self._proxy_command else None,
            )
        except TransportError:
            client.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise self._connect_error(exc) from None
        conn = client.get_transport()
        assert conn is not None
        conn.set_keepalive(15)  # notice a dead device during a long campaign
        return client

    def _connect_error(self, exc: BaseException) -> TransportError:
        """One line for each way a connection fails; never the key material."""
        where = self.where
        if isinstance(exc, paramiko.BadHostKeyException):
            fix = shlex.join(
                ["ssh-keygen", "-R", self._hostkey_name(), "-f", str(self.known_hosts)]
            )
            return TransportError(
                f"the host key of {where} has CHANGED: the server sent "
                f"{exc.key.get_name()} {exc.key.fingerprint} but {self.known_hosts} has "
                f"{exc.expected_key.get_name()} {exc.expected_key.fingerprint}; this may be a "
                "man-in-the-middle attack. If the device was reinstalled, verify the new key and "
                f"remove the old one (`{fix}`)"
            )
        if isinstance(exc, paramiko.PasswordRequiredException):
            return TransportError(
                f"the key file for {where} is protected by a passphrase; load it into "
                "ssh-agent (ssh-add) and leave key_file unset"
            )
        if isinstance(exc, paramiko.BadAuthenticationType) and "publickey" not in (
            exc.allowed_types or []
        ):
            offered = ", ".join(exc.allowed_types or []) or "nothing"
            return TransportError(
                f"the SSH server at {where} offers no public-key login (it allows: {offered}); "
                "Hurricane logs in with keys only: enable PubkeyAuthentication in the device's "
                "sshd_config"
            )
        if isinstance(exc, paramiko.AuthenticationException):
            keys = ", ".join(self.key_files) or "the SSH agent and ~/.ssh keys"
            return TransportError(
                f"SSH authentication as {where} failed with {keys}; add the public key to "
                f"~{self.user}/.ssh/authorized_keys on the device or pass the right key_file"
            )
        if isinstance(exc, TimeoutError):
            return DeviceUnreachable(
                f"cannot connect to {self.host}:{self.port}: no answer within "
                f"{self.connect_timeout:g} s; check that the device is on and reachable"
            )
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
                reason = "connection refused"
            return DeviceUnreachable(
                f"cannot connect to {self.host}:{self.port}: {reason}; check the host and port "
                "and that sshd runs on the device"
            )
        return DeviceUnreachable(
            f"SSH handshake with {self.host}:{self.port} failed: "
            f"{_one_line(str(exc)) or type(exc).__name__}; check that an SSH server listens there"
        )

    def _hostkey_name(self) -> str:
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def _client_or_raise(self) -> paramiko.SSHClient:
        """The live connection, opened on first use; a lost one must be reopened explicitly."""
        with self._lock:
            if self._client is None:
                self.open()
            conn = self.connection
            if conn is None or not conn.is_active():
                raise DeviceUnreachable(
                    f"the SSH connection to {self.where} was lost; call open() to reconnect"
                )
            assert self._client is not None
            return self._client

    def _session(self) -> paramiko.Channel:
        client = self._client_or_raise()
        try:
            conn = client.get_transport()
            assert conn is not None
            return conn.open_session(timeout=self.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise DeviceUnreachable(
                f"cannot open a session on {self.where}: {_one_line(str(exc))}; too many "
                "commands at once (sshd MaxSessions), or the connection dropped"
            ) from None

    def _signal(self, pid: int, sig: str) -> None:
        """Signal a command's process group (or, failing that, the process) on the device."""
        try:
            chan = self._session()
        except TransportError:
            return  # the connection is gone, and sshd hangs up on the command itself
        try:
            chan.exec_command(
                f"kill -s {sig} -- -{int(pid)} 2>/dev/null || kill -s {sig} {int(pid)} 2>/dev/null"
            )
            chan.status_event.wait(5.0)
        except (paramiko.SSHException, OSError, EOFError):
            pass
        finally:
            chan.close()

    def _sftp_client(self) -> paramiko.SFTPClient:
        with self._lock:
            client = self._client_or_raise()
            if self._sftp is None or self._sftp.get_channel().closed:
                try:
                    self._sftp = client.open_sftp()
                except (paramiko.SSHException, OSError, EOFError) as exc:
                    raise TransportError(
                        f"cannot start SFTP on {self.where}: {_one_line(str(exc))}; enable the "
                        "sftp Subsystem in the device's sshd_config"
                    ) from None
            return self._sftp

    def _disconnect(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass  # a dead connection may fail to close in any way it likes
            self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        with self._lock:
            self._close_agents()
            workdir, self._workdir = self._workdir, None
            conn = self.connection
            if workdir and conn is not None and conn.is_active():
                if PurePosixPath(workdir).name.startswith(RUN_PREFIX):
                    try:
                        result = self.run(["rm", "-rf", "--", workdir], timeout=30.0)
                        if result.returncode != 0:
                            log.warning("could not remove %s on %s", workdir, self.where)
                    except TransportError as exc:
                        log.warning("could not remove %s on %s: %s", workdir, self.where, exc)
            elif workdir:
                log.warning("connection lost: left %s on %s", workdir, self.where)
            self._disconnect()

    # -- files and commands ----------------------------------------------------------------

    def workdir(self) -> str:
        with self._lock:
            if self._workdir is None:
                sftp = self._sftp_client()
                root = self.remote_root
                try:
                    if root == "~" or root.startswith("~/"):
                        root = sftp.normalize(".") + root[1:]
                    root = sftp.normalize(root)
                    path = f"{root.rstrip('/')}/{RUN_PREFIX}{secrets.token_hex(6)}"
                    sftp.mkdir(path, mode=0o700)  # fails if it exists: the dir is ours alone
                except OSError as exc:
                    raise TransportError(
                        f"cannot create a work dir under {self.remote_root} on {self.where}: "
                        f"{exc.strerror or exc}; pass a writable remote_root"
                    ) from None
                self._workdir = path
            return self._workdir

    def put(self, local: Path, name: str) -> str:
        check_name(name)
        local = Path(local)
        if not local.is_file():
            raise TransportError(f"cannot copy {local}: no such file")
        remote = f"{self.workdir()}/{name}"
        sftp = self._sftp_client()
        with self._sftp_lock:
            try:
                sftp.put(str(local), remote, confirm=True)
                sftp.chmod(remote, local.stat().st_mode & 0o777)  # keep scripts executable
            except (OSError, paramiko.SSHException, EOFError) as exc:
                raise TransportError(
                    f"cannot copy {local} to {self.where}: {_one_line(str(exc))}; check the "
                    "space and permissions on the device"
                ) from None
        return remote

    def _spawn(self, argv: list[str]) -> _Process:
        return _SSHProcess(self, argv)
