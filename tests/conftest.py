"""Fixtures shared by the tests (plain helpers are in helpers.py)."""
import io
import socket

import pytest


@pytest.fixture
def png_bytes():
    from PIL import Image

    def make(color):
        buf = io.BytesIO()
        Image.new("RGB", (4, 3), color).save(buf, format="PNG")
        return buf.getvalue()

    return make


@pytest.fixture(scope="session")
def s3(monkeypatch_session):
    """An S3 API on 127.0.0.1 (moto's server, started here); yields storage_options."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch_session.setenv(k, v)
    opts = {"client_kwargs": {"endpoint_url": f"http://127.0.0.1:{port}"}, "key": "test", "secret": "test"}
    s3fs.S3FileSystem(**opts).mkdir("bucket")  # moto's backend lives in this process: one server per session
    yield opts
    server.stop()


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray with two CPUs, for one module's single-node tests."""
    ray = pytest.importorskip("ray")
    from helpers import RAY_RUNTIME_ENV

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, runtime_env=RAY_RUNTIME_ENV, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# gs:// on fake-gcs-server (tests/gcs_server.py); imported here so that gcsfs's gRPC probe is off
# before anything imports gcsfs, in this process and in every worker it starts
from gcs_server import gcs  # noqa: E402,F401
