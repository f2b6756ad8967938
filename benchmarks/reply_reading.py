"""How the host reads long lines from a device's agent: linear in their size, and bounded.

    .venv/bin/python benchmarks/reply_reading.py [--sizes-mb 10 20 40 100] [--transport local]

An agent on this machine (the local transport, or the loopback sshd of tests/sshd.py with
``--transport ssh``) writes one line of each size; the host reads it with the limit raised
above the size (to time the reader itself), then with the default limit (a line over it is
refused and the next line still read). Before the reader scanned each chunk once, 10, 20 and
40 MB lines took 1.8, 6.4 and 24.1 s and a 100 MB line 173 s.

Writes benchmarks/results/reply_reading.json: ``transport``, ``limit_bytes`` and ``sizes``,
one object per size with ``mb``, ``read_s`` (limit raised), ``s_per_mb`` and ``refused_s``
(default limit; null where the size is within it). Goal: ``s_per_mb`` about constant over
the sizes (ratio of the largest to the smallest under 2).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import devices.transport as transport
from hurricane.provenance import provenance

RESULTS = Path(__file__).parent / "results"
WRITER = (
    "import sys\n"
    "n = int(sys.argv[1])\n"
    "sys.stdout.write('{\"id\": \"x\", \"pad\": \"' + 'x' * n + '\"}\\n' + 'after\\n')\n"
    "sys.stdout.flush()\n"
)


def read_one(t: transport.Transport, nbytes: int) -> tuple[float, bool]:
    """Seconds to read (or refuse) one line of ``nbytes``, and whether it was refused."""
    agent = t.start([sys.executable, "-c", WRITER, str(nbytes)])
    t0 = time.perf_counter()
    try:
        agent.readline(timeout=600)
        refused = False
    except transport.LineTooLong:
        refused = True
    seconds = time.perf_counter() - t0
    assert agent.readline(timeout=60) == "after"
    agent.close()
    return seconds, refused


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mb", nargs="+", type=int, default=[10, 20, 40, 100])
    ap.add_argument("--transport", choices=["local", "ssh"], default="local")
    args = ap.parse_args()
    default_limit = transport.MAX_LINE
    with contextlib.ExitStack() as stack:
        if args.transport == "ssh":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.sshd import SSHServer

            server = stack.enter_context(SSHServer())
            t: transport.Transport = transport.SSHTransport(
                server.host,
                port=server.port,
                user=server.user,
                key_file=server.client_key,
                known_hosts=server.known_hosts,
            )
        else:
            t = transport.LocalTransport()
        stack.enter_context(t)
        sizes = []
        for mb in args.sizes_mb:
            n = mb * 1024 * 1024
            transport.MAX_LINE = 2 * n
            read_s, _ = read_one(t, n)
            transport.MAX_LINE = default_limit
            refused_s, refused = read_one(t, n)
            row = {
                "mb": mb,
                "read_s": round(read_s, 3),
                "s_per_mb": round(read_s / mb, 4),
                "refused_s": round(refused_s, 3) if refused else None,
            }
            print(
                f"{mb:4d} MB: read {read_s:.3f} s ({read_s / mb * 1000:.1f} ms/MB), "
                + (f"refused in {refused_s:.3f} s" if refused else "within the limit")
            )
            sizes.append(row)
    per_mb = [r["s_per_mb"] for r in sizes]
    print(f"s/MB largest over smallest: {max(per_mb) / min(per_mb):.2f}")
    out = {
        "transport": args.transport,
        "limit_bytes": default_limit,
        "sizes": sizes,
        "provenance": provenance(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reply_reading.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
