"""One resolution of outputs: local paths, file:// and pyarrow.fs URIs; checks before any work."""

from __future__ import annotations

import os

import pytest
from pyarrow import fs as pafs

from rayq.errors import OutputError
from rayq.storage import Location, check_output, resolve


def test_local_paths_and_file_uris_resolve_to_the_same_place(tmp_path):
    assert resolve(str(tmp_path / "run")).local == str(tmp_path / "run")
    assert resolve(f"file://{tmp_path}/run").local == str(tmp_path / "run")
    assert resolve("rel/run").local == os.path.abspath("rel/run")
    loc = resolve(f"file://{tmp_path}/run/m.onnx")
    assert loc.name == "m.onnx" and loc.parent().local == str(tmp_path / "run")
    assert loc.parent().uri == f"file://{tmp_path}/run"


@pytest.mark.parametrize(
    "uri, fragment",
    [
        ("foo://bucket/run", "cannot open the output location 'foo://bucket/run'"),
        ("s3:/bucket/run", "missing '/': write s3://"),
        ("file://relative/run", "cannot open the output location"),
        ("", "non-empty"),
        (42, "non-empty"),
    ],
)
def test_uris_pyarrow_cannot_open_are_output_errors(uri, fragment):
    with pytest.raises(OutputError) as info:
        resolve(uri)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_check_output_refuses_files_for_folders_and_folders_for_files(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(OutputError, match="existing file"):
        check_output(resolve(str(blocker)), folder=True)
    with pytest.raises(OutputError, match="is a file, not a folder"):
        check_output(resolve(str(blocker / "sub" / "run")), folder=True)
    with pytest.raises(OutputError, match="existing folder"):
        check_output(resolve(str(tmp_path / "dir.onnx")), folder=False)
    check_output(resolve(str(tmp_path / "new" / "deeper")), folder=True)  # creatable: fine
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_output_on_an_object_store():
    store = pafs._MockFileSystem()
    store.create_dir("bucket/run", recursive=True)
    with store.open_output_stream("bucket/file") as f:
        f.write(b"x")
    check_output(Location("mock://bucket/run", store, "bucket/run"), folder=True)
    check_output(Location("mock://bucket/new", store, "bucket/new"), folder=True)
    with pytest.raises(OutputError, match="existing file"):
        check_output(Location("mock://bucket/file", store, "bucket/file"), folder=True)
    assert Location("mock://bucket/run", store, "bucket/run").local is None
