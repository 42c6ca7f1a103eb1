"""The notebook API: `from compscale import open_store` gives sweeps, results and losses as
DataFrames and the reduction whose fitted law predicts; importing compscale loads no
orchestrator.
"""

import numpy as np
import pandas as pd
import pytest
from helpers import TRUE_RHO, doc_block, fill_store

from orchestrator.store import Store


def test_open_store_reads_sweeps_results_losses_and_fits_the_law(tmp_path):
    from compscale import open_store

    fill_store(Store(tmp_path / "store"), "synthetic")
    store = open_store(tmp_path / "store")
    sweeps = store.sweeps()
    assert list(sweeps.columns) == ["sweep", "cells", "done", "failed", "last_activity"]
    assert sweeps.iloc[0][["sweep", "cells", "done", "failed"]].tolist() == [
        "synthetic", 60, 60, 0,
    ]  # fmt: skip
    assert isinstance(sweeps.iloc[0]["last_activity"], pd.Timestamp)
    results = store.results("synthetic")
    assert len(results) == 60 and set(results["format"]) == set(TRUE_RHO)
    assert isinstance(store.losses("synthetic"), pd.DataFrame)
    law = store.reduce("synthetic", bootstrap=0).fitted
    predicted = law.predict([1e5], [2e6], ["int4"])
    expected = 40 * (1e5 * 0.9) ** -0.3 + 60 * 2e6**-0.25 + 1.2
    np.testing.assert_allclose(predicted, [expected], rtol=0.02)
    with pytest.raises(FileNotFoundError, match="no store at"):
        open_store(tmp_path / "absent")


def test_the_readme_notebook_example_runs(tmp_path, monkeypatch):
    from compscale.laws import FitOptions
    from compscale.reduce import reduce

    example = doc_block("README.md", "open_store", "python")
    store = Store(tmp_path / "store")
    fill_store(store, "smoke")
    reduction = reduce(
        store.results("smoke"), FitOptions(bootstrap=0)
    )  # stored: the example reads it
    reduction.write(store.layout.sweep("smoke").reduction)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("COMPSCALE_STORE", raising=False)
    namespace: dict = {}
    exec(example, namespace)
    assert len(namespace["results"]) == 60
    assert namespace["law"].predict([2e5], [4e6], ["int4"])[0] > 1.2
