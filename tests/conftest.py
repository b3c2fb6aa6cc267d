import io
import math
import random
import socket
from collections import defaultdict

import numpy as np
import pytest

GROUPS = ["alpha", "b/c", "..", "d.e.f", "ünïcödé", "x" * 300, "Case", "case", "", "../etc/passwd", "sp ace"]


def same(a, b) -> bool:
    """Exact equality that also treats nan == nan and compares numpy arrays by dtype/shape/value."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def mixed_examples(n=400, seed=0):
    """Examples of every supported value type, over awkward group ids."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({
            "gid": rng.choice(GROUPS),
            "i": i,
            "big": 2**62 + i,
            "f": rng.random(),
            "special": [float("nan"), float("inf"), -float("inf"), -0.0][i % 4],
            "flag": i % 3 == 0,
            "none": None,
            "lst": [1, "x", None, [2.5, True]],
            "nested": {"k": {"j": [i, {"deep": "é"}]}, "empty": {}},
            "raw": bytes([i % 256]) * (i % 5),
            "arr": np.arange(i % 4 * 2, dtype=[np.float32, np.int64, np.uint8][i % 3]).reshape(-1, 2),
            "text": "hello wörld  \n" * (i % 3) + "\ud800" * (i == 7),
        })
    return out


def groupby(examples, key):
    g = defaultdict(list)
    for ex in examples:
        g[key(ex)].append(ex)
    return g


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


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


# gs:// on fake-gcs-server (tests/gcs_server.py); imported here so that gcsfs's gRPC probe is off
# before anything imports gcsfs, in this process and in every worker it starts
from gcs_server import gcs  # noqa: E402,F401
