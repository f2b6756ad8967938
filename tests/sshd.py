"""A real OpenSSH server on loopback for tests, never the system's one.

Everything it needs (host key, client key, authorized_keys, sshd_config, pid file, log) lives
in its own temporary folder, so tests exercise real host-key checks, key authentication, SFTP
and the remote login shell exactly as a user's board would, and can kill the server or its
connections mid-run.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself, so it must be started by absolute path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str = "hurricane-test") -> str:
    """Make an unencrypted ed25519 key pair at `path`; return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
    )
    return path.with_name(path.name + ".pub").read_text().strip()


class SSHServer:
    """Start `sshd -D` on 127.0.0.1:<free port> for the current user; a context manager.

    Attributes: host, port, user, client_key (private key path), known_hosts (a file that
    trusts this server), host_pubkey_line (the `[127.0.0.1]:PORT ssh-ed25519 AAAA...` line),
    dir (the temporary folder), log (sshd's stderr).
    """

    def __init__(self, options: dict[str, str] | None = None) -> None:
        """``options`` replace or add sshd_config keywords (``{"PubkeyAuthentication": "no"}``)."""
        self.dir = Path(tempfile.mkdtemp(prefix="hurricane-sshd-"))
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.log = self.dir / "sshd.log"
        self._proc: subprocess.Popen | None = None

        host_key = self.dir / "host_ed25519"
        host_pub = keygen(host_key, "hurricane-test-host")
        self.client_key = self.dir / "client_ed25519"
        client_pub = keygen(self.client_key)
        authorized = self.dir / "authorized_keys"
        authorized.write_text(client_pub + "\n")
        authorized.chmod(0o600)

        keytype, blob = host_pub.split()[:2]
        self.host_pubkey_line = f"[{self.host}]:{self.port} {keytype} {blob}"
        self.known_hosts = self.dir / "known_hosts"
        self.known_hosts.write_text(self.host_pubkey_line + "\n")

        self.config = self.dir / "sshd_config"
        lines = [
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            f"AllowUsers {self.user}",
            f"PidFile {self.dir / 'sshd.pid'}",
            "Subsystem sftp internal-sftp",
            "LogLevel ERROR",
        ]
        for key, value in (options or {}).items():
            lines = [ln for ln in lines if ln.split()[0] != key] + [f"{key} {value}"]
        # OpenSSH >= 9.8 penalises sources that fail to authenticate: the tests that present
        # a wrong key or refuse the host key would lock out the tests after them.
        self.config.write_text("\n".join([*lines, "PerSourcePenalties no"]) + "\n")
        if self._config_error():
            self.config.write_text("\n".join(lines) + "\n")
            error = self._config_error()
            if error:
                raise RuntimeError(f"sshd rejects the test config {self.config}: {error}")

    def _config_error(self) -> str:
        """sshd's complaint about the config file, or '' when it accepts it."""
        if os.geteuid() == 0:
            # sshd insists on its privilege separation directory when started as root.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        return "" if check.returncode == 0 else (check.stderr.strip() or f"rc {check.returncode}")

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait until its port accepts connections."""
        if self.running:
            return
        with open(self.log, "ab") as log:
            self._proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"sshd exited with {self._proc.returncode}: {self.log.read_text().strip()}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd did not listen on port {self.port}: {self.log.read_text()}")

    def stop(self) -> None:
        """Kill the listener and every connection it serves (the device goes away)."""
        self.drop_connections()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(timeout=10)
        self._proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port with the same keys."""
        self.stop()
        self.start()

    def drop_connections(self) -> int:
        """Kill the per-connection sshd processes (the listener keeps running); how many."""
        if self._proc is None:
            return 0
        children = _children(self._proc.pid)
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(children)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def write_ssh_config(self, path: Path, alias: str) -> Path:
        """Write an ssh_config with a `Host alias` block that reaches this server."""
        path.write_text(
            f"Host {alias}\n"
            f"    HostName {self.host}\n"
            f"    Port {self.port}\n"
            f"    User {self.user}\n"
            f"    IdentityFile {self.client_key}\n"
        )
        return path

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SSHServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
