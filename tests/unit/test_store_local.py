import os
import numpy as np
import pytest

from lt_ssl.errors import RunUriError, StorageError
from lt_ssl.store import open_store


def test_round_trip_and_listing(tmp_path):
    store = open_store(tmp_path.as_uri())
    store.write_json("a/b.json", {"x": 1})
    store.write_numpy("a/c.npy", np.arange(4))
    store.write_text("d.txt", "hi")
    assert store.read_json("a/b.json") == {"x": 1}
    assert store.read_numpy("a/c.npy").tolist() == [0, 1, 2, 3]
    assert store.list() == ["a/b.json", "a/c.npy", "d.txt"]
    assert store.list("a") == ["a/b.json", "a/c.npy"]
    store.delete("d.txt")
    assert not store.exists("d.txt")


def test_plain_path_becomes_file_uri(tmp_path):
    assert open_store(str(tmp_path)).uri == tmp_path.as_uri()


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a//b", "a/./b", "", "a/../../b", "a b"])
def test_keys_cannot_leave_the_run(tmp_path, key):
    with pytest.raises(RunUriError):
        open_store(tmp_path.as_uri()).write_bytes(key, b"x")


@pytest.mark.parametrize("uri", ["http://host/x", "gs://b/p", "file://host/x", "s3://bucket", "s3://bucket/../x"])
def test_bad_run_uris(uri):
    with pytest.raises(RunUriError):
        open_store(uri)


def test_failed_write_leaves_the_old_object(tmp_path, monkeypatch):
    store = open_store(tmp_path.as_uri())
    store.write_bytes("m.bin", b"old")

    def explode(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", explode)
    with pytest.raises(OSError):
        store.write_bytes("m.bin", b"new")
    assert store.read_bytes("m.bin") == b"old"
    assert store.list() == ["m.bin"]  # no temp file left behind


def test_missing_key_is_a_storage_error(tmp_path):
    with pytest.raises(StorageError, match="does not exist"):
        open_store(tmp_path.as_uri()).read_bytes("nope.json")


def test_a_killed_writers_temp_file_is_removed_on_the_next_start(tmp_path):
    """SIGKILL mid-write leaves `.name.<host>-<pid>.*.tmp`; the next LocalStore deletes it because that
    pid is gone, and keeps the temporaries of writers still running or on another host."""
    import signal
    import subprocess
    import sys

    from lt_ssl.store.local import _HOST

    child = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from lt_ssl.store.local import LocalStore\n"
        "s = LocalStore(Path(sys.argv[1]))\n"
        "s._atomic_write('stage/model.pt', lambda f: (f.write(b'half'), f.flush(), print('writing', flush=True),"
        " time.sleep(60)))\n"), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait()
    (dead,) = (tmp_path / "stage").glob(".model.pt.*.tmp")
    assert f".{_HOST}-{child.pid}." in dead.name
    live = tmp_path / "stage" / f".other.json.{_HOST}-{os.getpid()}.abc123.tmp"
    foreign = tmp_path / "stage" / f".x.json.some-other-host-{child.pid}.abc123.tmp"
    live.write_bytes(b"in flight")
    foreign.write_bytes(b"another machine's")

    store = open_store(tmp_path.as_uri())
    assert not dead.exists()
    assert live.exists() and foreign.exists()
    assert store.list() == []
