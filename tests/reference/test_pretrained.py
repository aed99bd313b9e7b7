"""Released weights end to end against an HTTP server on 127.0.0.1 serving files the tests make:
download, cache, atomicity, sha256 pin, truncated and wrong files, the offline error."""

import hashlib
import http.server
import io
import threading
from pathlib import Path

import pytest
import torch

import reference as R
from reference.pretrained import RELEASED, URL_VARIABLE, DIR_VARIABLE, download_url, weights_path

DATA = Path(__file__).resolve().parents[1] / "data"
SPEC = {"retinaface": "retinaface_mobilenet0.25.txt", "retinaface-resnet50": "retinaface_resnet50.txt",
        "arcface": "arcface_resnet18_ir.txt"}
BUILD = {"retinaface": lambda **kw: R.retinaface("mobile0.25", **kw),
         "retinaface-resnet50": lambda **kw: R.retinaface("resnet50", **kw),
         "arcface": lambda **kw: R.arcface(**kw)}


def spec_file(name: str, prefix: str = "") -> bytes:
    """A torch.save file with exactly the released keys (tests/data, the spec) and shapes; each
    tensor is one value expanded to its shape, so even ResNet-50's file is a few kilobytes."""
    dtypes = {k: v.dtype for k, v in BUILD[name](progress=False).state_dict().items()}
    state = {}
    for line in (DATA / SPEC[name]).read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape = line.split("\t")
        state[prefix + key] = torch.full((), 0.5).to(dtypes[key]).expand(eval(shape))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def saved(state) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class Server:
    """Serves ``files`` (name -> bytes); ``cut`` names files whose connection closes halfway."""

    def __init__(self):
        self.files, self.cut, self.requests = {}, set(), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append(name)
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if name in server.cut else body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    s = Server()
    monkeypatch.setenv(URL_VARIABLE, s.url)
    monkeypatch.setenv(DIR_VARIABLE, str(tmp_path / "cache"))
    yield s
    s.close()


def cache_files(tmp_path):
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_once_then_from_the_cache(server, tmp_path, capsys):
    good = R.randomize_batchnorm(R.retinaface("mobile0.25", seed=3), seed=3)
    server.files[RELEASED["retinaface"].filename] = saved({"module." + k: v for k, v in good.state_dict().items()})
    model = R.retinaface("mobile0.25", pretrained=True)
    assert not model.training
    for k, v in good.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert server.requests == ["detection_mobilenet0.25_Final.pth"]
    assert cache_files(tmp_path) == ["detection_mobilenet0.25_Final.pth"]
    digest = hashlib.sha256(server.files["detection_mobilenet0.25_Final.pth"]).hexdigest()
    err = capsys.readouterr().err
    assert "downloading detection_mobilenet0.25_Final.pth" in err and digest in err
    again = R.retinaface("mobile0.25", pretrained=True, sha256=digest)  # a cache hit, checked against the pin
    assert server.requests == ["detection_mobilenet0.25_Final.pth"]
    assert torch.equal(again.body.stage1[0][0].weight, good.body.stage1[0][0].weight)
    assert R.is_cached("retinaface") and R.weights_path("retinaface") == tmp_path / "cache" / RELEASED["retinaface"].filename


@pytest.mark.parametrize("name", list(SPEC))
@pytest.mark.parametrize("prefix", ["", "module."])
def test_the_released_keys_load(server, tmp_path, name, prefix):
    """Files with exactly the released models' keys and shapes (and the DataParallel prefix) load."""
    server.files[RELEASED[name].filename] = spec_file(name, prefix)
    model = BUILD[name](pretrained=True, progress=False)
    assert all(bool((v == 0.5).all()) for k, v in model.state_dict().items() if v.is_floating_point())
    assert cache_files(tmp_path) == [RELEASED[name].filename]


def test_explicit_directory_beats_the_variable(server, tmp_path):
    server.files[RELEASED["retinaface"].filename] = spec_file("retinaface")
    R.retinaface(pretrained=True, weights_dir=tmp_path / "mine", progress=False)
    assert (tmp_path / "mine" / RELEASED["retinaface"].filename).is_file() and cache_files(tmp_path) == []


def test_default_cache_is_torch_hub(monkeypatch, tmp_path):
    monkeypatch.delenv(DIR_VARIABLE, raising=False)
    monkeypatch.delenv(URL_VARIABLE, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert weights_path("arcface") == tmp_path / "hub" / "checkpoints" / "arcface_resnet18.pth"
    assert download_url("arcface") == RELEASED["arcface"].url
    monkeypatch.setenv(URL_VARIABLE, str(tmp_path / "folder"))
    assert download_url("arcface") == (tmp_path / "folder" / "arcface_resnet18.pth").as_uri()


def test_local_folder_as_mirror(monkeypatch, tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "detection_mobilenet0.25_Final.pth").write_bytes(spec_file("retinaface"))
    monkeypatch.setenv(URL_VARIABLE, str(tmp_path / "folder"))
    monkeypatch.setenv(DIR_VARIABLE, str(tmp_path / "cache"))
    R.retinaface(pretrained=True, progress=False)
    assert cache_files(tmp_path) == ["detection_mobilenet0.25_Final.pth"]


def test_sha256_mismatch_keeps_nothing(server, tmp_path):
    server.files[RELEASED["retinaface"].filename] = spec_file("retinaface")
    with pytest.raises(R.WeightFileError, match="has sha256 [0-9a-f]{64}, but 0{64} was pinned"):
        R.retinaface(pretrained=True, sha256="0" * 64, progress=False)
    assert cache_files(tmp_path) == []
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        R.retinaface(pretrained=True, sha256="abc", progress=False)


def test_connection_cut_halfway_keeps_nothing(server, tmp_path):
    name = RELEASED["retinaface"].filename
    server.files[name] = spec_file("retinaface")
    server.cut.add(name)
    with pytest.raises(R.WeightsDownloadError, match="(broke off|truncated).*try again"):
        R.retinaface(pretrained=True, progress=False)
    assert cache_files(tmp_path) == []


def test_truncated_file_keeps_nothing(server, tmp_path):
    name = RELEASED["retinaface"].filename
    server.files[name] = spec_file("retinaface")[:-300]
    with pytest.raises(R.WeightFileError, match=r"mirror/detection_mobilenet0.25_Final.pth'.*truncated.*nothing was saved"):
        R.retinaface(pretrained=True, progress=False)
    assert cache_files(tmp_path) == []


def test_wrong_keys_keep_nothing(server, tmp_path):
    server.files[RELEASED["arcface"].filename] = spec_file("retinaface")  # the detector's file under ArcFace's name
    with pytest.raises(R.WeightsMismatchError, match=r"(?s)from 'http://127.0.0.1.*missing keys.*nothing was saved"):
        R.arcface(pretrained=True, progress=False)
    assert cache_files(tmp_path) == []


def test_bad_cached_file_names_the_fix(server, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / RELEASED["retinaface"].filename).write_text("<html>rate limited</html>")
    with pytest.raises(R.WeightFileError, match="text file.*delete .*detection_mobilenet0.25_Final.pth and it is downloaded again"):
        R.retinaface(pretrained=True, progress=False)
    assert server.requests == []


def test_missing_on_the_server(server, tmp_path):
    with pytest.raises(R.WeightsDownloadError, match="HTTP 404"):
        R.retinaface("resnet50", pretrained=True, progress=False)
    assert cache_files(tmp_path) == []


def test_offline_error_says_how_to_place_the_file(monkeypatch, tmp_path):
    with socket_refusing() as url:
        monkeypatch.setenv(URL_VARIABLE, url)
        monkeypatch.setenv(DIR_VARIABLE, str(tmp_path / "cache"))
        with pytest.raises(R.WeightsDownloadError) as caught:
            R.arcface(pretrained=True, progress=False)
    message = str(caught.value)
    target = tmp_path / "cache" / "arcface_resnet18.pth"
    assert f"could not download arcface_resnet18.pth from {url}/arcface_resnet18.pth" in message
    assert f"copy it to {target}" in message and DIR_VARIABLE in message and "reference.load_weights" in message
    assert cache_files(tmp_path) == []


def test_no_released_se_weights():
    with pytest.raises(ValueError, match="use_se=False"):
        R.arcface(use_se=True, pretrained=True)


class socket_refusing:
    """A URL on 127.0.0.1 where nothing listens (a port bound, then closed)."""

    def __enter__(self):
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        return f"http://127.0.0.1:{port}/weights"

    def __exit__(self, *exc):
        return False
