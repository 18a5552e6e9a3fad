"""Joining a Ray cluster: checks that need no Ray in this process, so they run before it loads.

Ray reads some settings (``RAY_AUTH_MODE``) when it is imported: ``join_check`` runs from the
command line before ``ray`` is imported, and sets what the cluster needs for this run.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from optsearch.errors import ConfigError

PROBE = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", include_dashboard=False, log_to_driver=False)
print(int(ray.cluster_resources().get("CPU", 0)))
"""
_checked: set[str] = set()
# Never shipped to a cluster with the working directory: stores, data, environments.
SHIP_EXCLUDES = ["*.db", "*.db-wal", "*.db-shm", "*.db.lock", "mlartifacts/", "mlruns/", ".git/", ".venv/",
                 "**/__pycache__/", "*.pt", "*.tar", "*.tar.*", "*.zip", "data/", "report-*/"]


def address_of(flag: str | None) -> str | None:
    """The cluster to join: ``--ray-address``, else ``RAY_ADDRESS`` (as Ray's own tools read it)."""
    return flag or os.environ.get("RAY_ADDRESS") or None


def check_ray_address(address: str | None) -> None:
    """Something answers at a Ray address (a dead one would hang ``ray.init`` for minutes)."""
    if address in (None, "", "auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("--ray-address", address, "must look like HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConfigError("--ray-address", address, f"nothing answers there: {err.strerror or err}") from None


def probe_cluster(address: str, timeout: float = 20.0) -> str | None:
    """Join ``address`` once in a throwaway process, with a deadline: a cluster that does not
    let this process in (most often Ray's token authentication, on by default for
    ``ray start --head``) would make ``ray.init`` retry for ever. Returns the
    ``RAY_AUTH_MODE`` that works (None: as set now); ``ConfigError`` when none does."""
    modes = [os.environ.get("RAY_AUTH_MODE")]
    if modes[0] is None:
        modes.append("token")
    for mode in modes:
        env = {**os.environ, **({"RAY_AUTH_MODE": mode} if mode else {})}
        if _joins(address, env, timeout):
            return mode
    raise ConfigError("--ray-address", address,
                      f"the Ray cluster there did not let this process in within {timeout:.0f} s; if it uses token "
                      "authentication, set RAY_AUTH_MODE=token with its token in ~/.ray/auth_token or RAY_AUTH_TOKEN, "
                      "as on its nodes")


def _joins(address: str, env: dict, timeout: float) -> bool:
    """Whether a process with ``env`` joins the cluster; a refused token ends it at once."""
    import threading
    import time

    proc = subprocess.Popen([sys.executable, "-c", PROBE, address], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    refused = threading.Event()

    def watch() -> None:
        for line in proc.stderr:
            if "InvalidAuthToken" in line or "Unauthenticated" in line:
                refused.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not refused.is_set() and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        return False
    return proc.returncode == 0 and not refused.is_set()


def join_check(address: str | None) -> None:
    """Before joining ``address``: it answers, and lets this process in. Sets
    ``RAY_AUTH_MODE`` when the cluster needs token authentication, which works only before
    ``ray`` is imported (else a one-line error says to set it)."""
    check_ray_address(address)
    if not address or address in ("auto", "local") or address in _checked:
        return
    mode = probe_cluster(address)
    if mode and mode != os.environ.get("RAY_AUTH_MODE"):
        if "ray" in sys.modules:
            raise ConfigError("--ray-address", address,
                              f"the cluster needs RAY_AUTH_MODE={mode} (token authentication): set it in the environment")
        os.environ["RAY_AUTH_MODE"] = mode
    _checked.add(address)
