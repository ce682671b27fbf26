"""The row store shared by concurrent runs: merges writers, never changes under a reader, trusts only checksums."""

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from transferlab.data import fingerprints, row_store
from transferlab.data.row_store import RowStore

SRC = Path(row_store.__file__).parents[2]
# Children import the store without transferlab/__init__, which imports torch (seconds per process).
CHILD_PRELUDE = f"""
import sys, types
sys.path.insert(0, {str(SRC)!r})
package = types.ModuleType("transferlab")
package.__path__ = [{str(SRC / "transferlab")!r}]
sys.modules["transferlab"] = package
import json, warnings
import numpy as np
from transferlab.data.row_store import RowStore
"""


def _rows_for(keys: list[str]) -> np.ndarray:
    """Rows that depend on the key only (as content-addressed rows do), so any reader can check them."""
    return np.array([[int(k[-4:], 16) % 251, len(k), 7, 1] for k in keys], dtype=np.uint8)


def _child(script: str, *, as_user: list[str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([*(as_user or []), sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(script)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _snapshot(directory: Path) -> dict[str, tuple[int, int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(directory.rglob("*"))}


def test_an_empty_append_and_a_complete_store_write_nothing(tmp_path):
    RowStore(tmp_path / "new", (4,), "uint8").add([], np.zeros((0, 4)))
    assert not (tmp_path / "new").exists()
    store = RowStore(tmp_path / "s", (4,), "uint8")
    store.add(["k0001", "k0002"], _rows_for(["k0001", "k0002"]))
    before = _snapshot(tmp_path / "s")
    store.add([], np.zeros((0, 4)))
    store.add(["k0002", "k0001"], _rows_for(["k0002", "k0001"]))  # complete already
    store.append(iter([]))
    RowStore(tmp_path / "s", (4,), "uint8").add(["k0001"], _rows_for(["k0001"]))
    assert _snapshot(tmp_path / "s") == before
    assert np.array_equal(store.rows(["k0002"])[np.array([0])], _rows_for(["k0002"]))


def test_a_view_of_mapped_rows_refuses_to_be_pickled(tmp_path):
    """Its segments are this process's file descriptors: another process would read another file."""
    RowStore(tmp_path / "s", (4,), "uint8").add(["k0001"], _rows_for(["k0001"]))
    view = RowStore(tmp_path / "s", (4,), "uint8").rows(["k0001"])
    with pytest.raises(TypeError, match="cannot be sent to another process"):
        pickle.dumps(view)


def test_concurrent_processes_merge_their_rows(tmp_path):
    n_processes, appends, per_append = 3, 12, 5
    script = f"""
    import sys
    warnings.simplefilter("error", UserWarning)  # a "corrupt" warning would fail the child
    me = int(sys.argv[1])
    def rows_for(keys):
        return np.array([[int(k[-4:], 16) % 251, len(k), 7, 1] for k in keys], dtype=np.uint8)
    mine = []
    for a in range({appends}):
        store = RowStore({str(tmp_path / "s")!r}, (4,), "uint8")
        keys = [f"p{{me}}-{{a:02d}}-{{i:04x}}" for i in range({per_append})] + [f"shared-{{a:04x}}"]
        store.add(keys, rows_for(keys))
        mine += keys
        assert np.array_equal(store.rows(mine)[np.arange(len(mine))], rows_for(mine))
    print(len(mine))
    """
    children = [subprocess.Popen([sys.executable, "-c", CHILD_PRELUDE + textwrap.dedent(script), str(me)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for me in range(n_processes)]
    results = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, results):
        assert child.returncode == 0, err
        assert "corrupt" not in err and out.strip() == str(appends * (per_append + 1))
    everything = [f"p{me}-{a:02d}-{i:04x}" for me in range(n_processes) for a in range(appends)
                  for i in range(per_append)] + [f"shared-{a:04x}" for a in range(appends)]
    store = RowStore(tmp_path / "s", (4,), "uint8")
    assert store.missing(everything) == [] and len(store) == len(everything)
    assert np.array_equal(store.rows(everything)[np.arange(len(everything))], _rows_for(everything))
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert sorted(p.name for p in (tmp_path / "s").glob("seg-*.bin")) == sorted(s["file"] for s in index["segments"])
    assert not list((tmp_path / "s").glob(".*.tmp"))


def test_a_held_view_keeps_its_rows_while_another_process_replaces_the_store(tmp_path):
    store = RowStore(tmp_path / "s", (4,), "uint8")
    original = np.arange(8, dtype=np.uint8).reshape(2, 4)
    store.add(["a", "b"], original)
    view = store.rows(["a", "b"])
    assert np.array_equal(view[np.arange(2)], original)
    replace = f"""
    import shutil
    shutil.rmtree({str(tmp_path / "s")!r})
    RowStore({str(tmp_path / "s")!r}, (4,), "uint8").add(["c", "a"], np.full((2, 4), 200, np.uint8))
    """
    child = _child(replace)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert view[np.arange(2)].tobytes() == original.tobytes()
    assert view.subset([1])[np.array([0])].tobytes() == original[1].tobytes()
    assert (RowStore(tmp_path / "s", (4,), "uint8").rows(["a"])[np.array([0])] == 200).all()


def test_a_caller_bug_deletes_nothing(tmp_path):
    store = RowStore(tmp_path / "s", (4,), "uint8")
    store.add(["a", "b"], _rows_for(["a", "b"]))
    before = _snapshot(tmp_path / "s")
    with pytest.raises(ValueError, match="rows of shape"):
        store.add(["c"], np.zeros((1, 5)))
    with pytest.raises(ValueError, match="folder name should differ"):
        RowStore(tmp_path / "s", (5,), "uint8")
    with pytest.raises(KeyError):
        store.rows(["not stored"])
    assert _snapshot(tmp_path / "s") == before
    assert RowStore(tmp_path / "s", (4,), "uint8").missing(["a", "b", "c"]) == ["c"]


def test_each_segment_is_read_once_per_process_to_verify_it(tmp_path, monkeypatch):
    store = RowStore(tmp_path / "s", (4,), "uint8")
    store.add(["a"], _rows_for(["a"]))
    store.add(["b"], _rows_for(["b"]))
    monkeypatch.setattr(fingerprints, "_DIGESTS", {})  # as in a new process
    reads = []
    original = fingerprints._stream_digest
    monkeypatch.setattr(fingerprints, "_stream_digest", lambda f: reads.append(1) or original(f))
    for _ in range(3):
        assert RowStore(tmp_path / "s", (4,), "uint8").missing(["a", "b"]) == []
    assert len(reads) == 2  # one per segment, not per open


def _as_unprivileged_user() -> list[str] | None:
    """A command prefix that runs as `nobody`, or None where this machine cannot switch users."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    works = shutil.which(prefix[0]) and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0
    return prefix if works else None


def test_a_read_only_cache_is_read_and_never_deleted():
    as_user = _as_unprivileged_user()
    if as_user is None:
        pytest.skip("running as root and cannot switch to an unprivileged user (setpriv failed)")
    base = Path(tempfile.mkdtemp())  # not under pytest's tmp_path: that is private to root
    try:
        os.chmod(base, 0o777)
        cache = base / "cache"
        RowStore(cache / "one", (4,), "uint8").add(["a", "b"], _rows_for(["a", "b"]))
        for folder in (cache / "one", cache):
            os.chmod(folder, 0o555)
        before = _snapshot(cache)
        script = f"""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            stored = RowStore({str(cache / "one")!r}, (4,), "uint8")
            new = RowStore({str(cache / "two")!r}, (4,), "uint8")  # a second store under the same read-only root
            for store in (stored, new):
                store.add(["b", "c"], np.array([[0, 1, 7, 1], [99, 1, 7, 1]], np.uint8))
                store.add(["d"], np.array([[13, 1, 7, 1]], np.uint8))
        print(json.dumps({{"warnings": [str(w.message) for w in caught],
                          "stored": stored.rows(["a", "b", "c", "d"])[np.arange(4)].tolist(),
                          "new": new.rows(["b", "c", "d"])[np.arange(3)].tolist()}}))
        """
        child = _child(script, as_user=as_user)
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        result = json.loads(out)
        assert len(result["warnings"]) == 1, result["warnings"]
        assert "read-only" in result["warnings"][0] and str(cache) in result["warnings"][0]
        computed = [[99, 1, 7, 1], [13, 1, 7, 1]]
        assert result["stored"] == _rows_for(["a", "b"]).tolist() + computed  # stored rows read, not recomputed
        assert result["new"] == [[0, 1, 7, 1]] + computed
        assert _snapshot(cache) == before
    finally:
        for folder in (base / "cache", base / "cache" / "one"):
            if folder.exists():
                os.chmod(folder, 0o755)
        shutil.rmtree(base)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs: a full disk for real, not a mocked write."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)  # lazy: stores may still hold segments


def test_a_full_disk_publishes_nothing_and_names_the_cache(tiny_disk):
    directory = tiny_disk / "s"
    store = RowStore(directory, (1024,), "uint8")
    small = np.full((4, 1024), 3, np.uint8)
    store.add([f"k{i}" for i in range(4)], small)
    too_big = ((["big%d" % c], np.full((1, 1024), c % 256, np.uint8)) for c in range(2048))  # 2 MiB
    with pytest.raises(OSError) as raised:
        store.append(too_big)
    assert raised.value.errno == errno.ENOSPC and str(directory) in str(raised.value)
    assert sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp")) == []
    reopened = RowStore(directory, (4 * 256,), "uint8")
    assert reopened.missing([f"k{i}" for i in range(4)] + ["big0"]) == ["big0"]
    assert np.array_equal(reopened.rows([f"k{i}" for i in range(4)])[np.arange(4)], small)
