"""Every notebook in notebooks/ executes headlessly without errors (05 and 06 in the slow stage)."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: notebooks whose small defaults still run several ab initio jobs (3-7 min on 2 cores):
#: executed in the slow stage of CI, here and in the real-browser test
SLOW_NOTEBOOKS = {"05_paper_figures.ipynb", "06_more_molecules.ipynb"}
PARAMS = [pytest.param(p, marks=pytest.mark.slow) if p.name in SLOW_NOTEBOOKS else p
          for p in NOTEBOOKS]


@pytest.mark.parametrize("path", PARAMS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=2400 if path.name in SLOW_NOTEBOOKS else 600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no notebook"
