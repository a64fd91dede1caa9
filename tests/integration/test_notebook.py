"""The Colab notebook runs to completion headlessly on CPU (nbclient), with a tiny setting.

`notebooks/rankseg_colab.ipynb` keeps every setting in one cell tagged `parameters`; like
papermill, the test inserts a cell tagged `injected-parameters` after it: no install, 2
training steps, a one-layer model, one validation image, a temporary workdir. The notebook
then trains, evaluates, predicts, converts the official fixture with the CLI and predicts
again, and the test checks what a reader would see: the panel (image | prediction | ground
truth overlays) and the Fig. 1 top-kappa chart as PNG outputs of their cells (decoded, not
blank, the panel three maps wide), the converted model's panel and chart, the converted
params dir and the run's checkpoint. The kernel compiles with XLA:CPU's cheap optimisation
level (test-only `XLA_FLAGS`, as other tests do with `xla_backend_optimization_level=0`):
compilation is most of the time, and the numbers are not what is tested here.
"""

from __future__ import annotations

import base64
import io
import json
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "rankseg_colab.ipynb"

# The tiny setting (seconds of compute; compilation dominates).
TINY = {
    "INSTALL": False,
    "STEPS": 2,
    "OVERRIDES": {"model.vit.depth": 1, "model.head.n_layers": 2, "train.batch_size": 2,
                  "data.synthetic.num_val": 1, "test.max_images": 1},
}

FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def inject_parameters(nb, values: dict, workdir: pathlib.Path):
    """Inserts a cell setting `values` (and WORKDIR) after the `parameters` cell; returns it."""
    import nbformat

    index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in {**values, "WORKDIR": str(workdir)}.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    return nb


def png_outputs(nb, tag: str) -> list[np.ndarray]:
    """The PNG images a tagged cell displayed, decoded to arrays."""
    from PIL import Image

    cells = [c for c in nb.cells if tag in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"one cell tagged {tag!r} expected"
    return [np.asarray(Image.open(io.BytesIO(base64.b64decode(out["data"]["image/png"]))))
            for out in cells[0].get("outputs", []) if "image/png" in out.get("data", {})]


def test_every_setting_is_in_the_parameters_cell():
    nb = json.loads(NOTEBOOK.read_text())  # plain JSON: runs without the notebook packages
    params = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert len(params) == 1
    names = {line.split("=")[0].strip() for line in "".join(params[0]["source"]).splitlines()
             if "=" in line and not line.startswith("#")}
    assert set(TINY) | {"WORKDIR"} <= names
    assert all(not c.get("outputs") for c in nb["cells"] if c["cell_type"] == "code"), \
        "commit the notebook without outputs"


@pytest.mark.slow
def test_notebook_runs_headless_on_cpu(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = inject_parameters(nbformat.read(NOTEBOOK, as_version=4), TINY, tmp_path / "run")
    # The kernel (and the convert command it runs) inherit this process's environment.
    saved = {k: os.environ.get(k) for k in ("PYTHONPATH", "XLA_FLAGS")}
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), saved["PYTHONPATH"]]))
    os.environ["XLA_FLAGS"] = " ".join(filter(None, [saved["XLA_FLAGS"], FAST_XLA]))
    try:
        client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                         resources={"metadata": {"path": str(ROOT)}})
        client.execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    (panel,) = png_outputs(nb, "show-panel")
    (chart,) = png_outputs(nb, "show-chart")
    for picture in (panel, chart):
        assert picture.ndim == 3 and min(picture.shape[:2]) > 100
        assert picture.reshape(-1, picture.shape[-1]).std(0).max() > 10  # not a blank image
    # The panel holds three maps side by side; the chart is its own figure.
    assert panel.shape[1] > 2 * panel.shape[0] and panel.shape != chart.shape
    assert len(png_outputs(nb, "show-upload")) == 2  # panel + chart of the converted model
    run = tmp_path / "run"
    assert (run / "converted" / "metadata.json").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
