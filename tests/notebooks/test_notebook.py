"""The example notebook runs top to bottom offline (so it cannot rot)."""

from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYQ_CACHE_DIR", str(tmp_path / "cache"))
    nb = nbformat.read(ROOT / "examples" / "notebook.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()
    outputs = "".join(
        str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
    )
    assert "SearchResult(status='met'" in outputs or "SearchResult(status='no_speedup'" in outputs
    # progress without ipywidgets: plain lines, never tqdm's "IProgress not found" widget failure
    assert "IProgress not found" not in outputs and "TqdmWarning" not in outputs
    assert any(
        "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    ), "result.plot() renders in the notebook"
