import json
import os

import pytest

from transferlab.atomic import write_atomic, write_json_atomic


def test_atomic_write_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "deep" / "results.json"
    write_json_atomic(target, {"a": 1})
    write_json_atomic(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temp files left


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    write_json_atomic(target, {"a": 1})

    def dies_halfway(tmp):
        tmp.write_text('{"a": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, dies_halfway)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
