"""Raw header fuzzing of the v2 infer route: the bytes of `Inference-Header-Content-Length`
and `Content-Length` written straight onto a socket, against the app each replica builds,
served by uvicorn on a loopback port with each of its HTTP parsers (httptools is what Serve's
proxy runs). Whatever the header says, the answer is a 4xx (or a 200 for the one right value),
never a 5xx."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

uvicorn = pytest.importorskip("uvicorn")

from serve.args import ServeArgs  # noqa: E402
from serve.http.asgi import make_api  # noqa: E402
from serve.service import Service  # noqa: E402

INFER = "/v2/models/modresnet/infer"
HEAD = json.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 32, 32, 3],
                "datatype": "UINT8",
                "parameters": {"binary_data_size": 3072},
            }
        ]
    }
).encode()
BODY = HEAD + bytes(range(256)) * 12
RIGHT = str(len(HEAD)).encode()


@pytest.fixture(scope="module", params=["httptools", "h11"])
def server(request, random_checkpoint):
    path = random_checkpoint
    svc = Service(ServeArgs(checkpoint=str(path), backend="torch", body_timeout_s=1).model_dump())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            make_api(svc), host="127.0.0.1", port=port, http=request.param, log_level="critical"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def post(port: int, headers: list[tuple[bytes, bytes]], body: bytes = BODY) -> tuple[int, bytes]:
    """(status, response body) of one raw HTTP/1.1 POST to the infer route."""
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    request = (
        b"POST " + INFER.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/octet-stream\r\n" + head + b"\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    status_line, _, rest = response.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 "), response[:200]
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def length(body: bytes = BODY) -> tuple[bytes, bytes]:
    return b"Content-Length", str(len(body)).encode()


def test_right_header_is_answered(server):
    status, body = post(server, [length(), (b"Inference-Header-Content-Length", RIGHT)])
    assert status == 200, body
    assert json.loads(body)["outputs"][0]["shape"] == [1, 10]


@pytest.mark.parametrize(
    "value",
    [
        "²".encode("latin-1"),  # str.isdigit() is True, int() raises
        "¹²³".encode("latin-1"),
        "١٢٣".encode(),  # Arabic-Indic digits: int() takes them decoded
        "１２３".encode(),  # full-width
        b"+" + RIGHT,
        b"-" + RIGHT,
        RIGHT[:1] + b" " + RIGHT[1:],
        RIGHT[:1] + b"_" + RIGHT[1:],
        b"0x" + RIGHT,
        b"1e3",
        b"",
        b"0",
        b"9" * 15,  # digits, far beyond the body
        b"9" * 16,
        b"9" * 5000,
        str(len(BODY) + 1).encode(),
        b"12abc",
    ],
)
def test_bad_inference_header_is_400(server, value):
    status, body = post(server, [length(), (b"Inference-Header-Content-Length", value)])
    assert status == 400, (status, body[:300])
    error = json.loads(body)["error"]
    assert "Inference-Header-Content-Length" in error and "\n" not in error, error


@pytest.mark.parametrize("second", [RIGHT, b"7"], ids=["same", "other"])
def test_duplicate_inference_header_is_400(server, second):
    header = b"Inference-Header-Content-Length"
    status, body = post(server, [length(), (header, RIGHT), (header, second)])
    assert status == 400, (status, body[:300])
    assert "sent 2 times" in json.loads(body)["error"]


@pytest.mark.parametrize(
    "headers,body",
    [
        ([(b"Content-Length", b"+3" + str(len(BODY))[1:].encode())], BODY),
        ([(b"Content-Length", "²".encode("latin-1"))], BODY),
        ([(b"Content-Length", "١٢".encode())], BODY),
        ([(b"Content-Length", b"1" + b"0" * 30)], BODY),
        ([length(), length()], BODY),  # RFC 9112 lets a server merge equal ones (h11 does)
        ([length(), (b"Content-Length", b"7")], BODY),
        ([(b"Content-Length", str(len(BODY) + 100).encode())], BODY),  # short body: 408
        ([(b"Content-Length", str(len(HEAD) - 10).encode())], BODY),  # the JSON cut short
        ([(b"Transfer-Encoding", b"chunked"), length()], BODY),
    ],
    ids=["plus", "superscript", "arabic", "huge", "dup-same", "dup-other", "over", "under", "te"],
)
def test_bad_content_length_is_4xx(server, headers, body):
    merged = headers == [length(), length()]
    headers = [*headers, (b"Inference-Header-Content-Length", RIGHT)]
    status, response = post(server, headers, body)
    assert 400 <= status < 500 or (merged and status == 200), (status, response[:300])


def _value_bytes():
    """Header-value bytes (visible ASCII, obs-text, inner spaces and tabs), or integers."""
    allowed = [b for b in range(256) if 0x21 <= b <= 0x7E or b >= 0x80 or b in (0x20, 0x09)]
    raw = st.lists(st.sampled_from(allowed), max_size=24).map(bytes)
    numbers = st.integers(-(10**20), 10**20).map(lambda n: str(n).encode())
    digits = st.sampled_from("0123456789²³¹١٢٣٤٥٦٧٨٩٠０１２３").map(lambda c: c.encode())
    return st.one_of(raw, numbers, st.lists(digits, min_size=1, max_size=6).map(b"".join))


@given(values=st.lists(_value_bytes(), min_size=1, max_size=3))
@settings(max_examples=150, deadline=None, derandomize=True, database=None)
def test_fuzzed_inference_header_is_never_5xx(server, values):
    header = b"Inference-Header-Content-Length"
    status, body = post(server, [length(), *((header, v) for v in values)])
    right = len(values) == 1 and values[0].strip(b" \t") == RIGHT
    assert status == 200 if right else 400 <= status < 500, (values, status, body[:300])
