"""`compscale fit` on QuEST's public runs (tests/data/quest_runs.csv: 104 C4 runs, 17 formats):
a real table whose fit later speed work must leave unchanged."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestrator.cli import main

QUEST_CSV = Path(__file__).resolve().parents[1] / "data" / "quest_runs.csv"
QUEST_FLAGS = ["--law", "unified", "--params-col", "non_embedding_parameters"]

# Measured on main at 3aeff3f (and the same to every digit at 6c98051, 82b65ed, 53ce220, f51e45b):
#   compscale fit tests/data/quest_runs.csv --law unified \
#       --params-col non_embedding_parameters --bootstrap 0 --json
# A tighter polish from the same optimum (trf, tol 1e-14) reaches 2.1884113e-4, 1e-4 lower:
# rho[w8a8-had] sits at its bound of 1 and the default tolerances stop short along it. The
# two-stage polish (plain least squares, then Huber; `laws.problem.two_stage_least_squares`)
# reaches that lower minimum, 2.1884113108e-4 (E at its bound): a better optimum, not a move, so
# the pin is an upper bound.
OBJECTIVE = 0.00021886318828863934

# plots.ipynb (cell 3) fitted L = e^a / (N eff(P))^alpha + e^b / D^beta + e^e by least squares
# of 1e-3 x log residuals and printed these parameters and cost 7.38431448432692e-10.
NOTEBOOK_PARAMS = [
    *(2.09605662e00, 6.27265220e-02, 4.45912547e00, 2.41288351e-01, -6.55478434e00),
    *(2.05046859e-02, 1.51870911e-01, 4.33126203e-01, 6.91831718e-01, 1.01619263e00),
    *(1.55770373e-02, 2.46499090e01, 7.84119072e-02, 3.22107861e-01, 6.03270679e-01),
    *(9.37628722e-01, 1.38419575e-01, 4.13717453e-01, 6.53058816e-01, 8.40434222e-01),
    *(3.81222089e-01, 6.29639028e-01),
]
NOTEBOOK_LABELS = [
    *("1", "2", "3", "4", "8", "1NOH", "1.585NOH", "2NOH", "3NOH", "4NOH", "8NOH"),
    *("1WO", "2WO", "3WO", "4WO", "2.5", "fp4"),
]


def test_the_table_is_the_one_quests_notebook_fits():
    table = pd.read_csv(QUEST_CSV, dtype={"P": str})
    a, alpha, b, beta, e = NOTEBOOK_PARAMS[:5]
    efficiency = dict(zip(NOTEBOOK_LABELS, NOTEBOOK_PARAMS[5:], strict=True)) | {"16": 1.0}
    params = table.non_embedding_parameters * table.P.map(efficiency)
    predicted = math.exp(a) / params**alpha + math.exp(b) / table.tokens**beta + math.exp(e)
    cost = 0.5 * np.sum((1e-3 * np.log(table.loss / predicted)) ** 2)
    assert len(table) == 104
    assert cost == pytest.approx(7.38431448432692e-10, rel=1e-6)


@pytest.mark.slow
def test_unified_fit_of_quest_runs_keeps_todays_objective_with_one_rho_per_format(capsys):
    assert main(["fit", str(QUEST_CSV), *QUEST_FLAGS, "--bootstrap", "0", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    formats = set(pd.read_csv(QUEST_CSV).format)
    assert document["law"] == "unified"
    assert document["cells"] == 104
    assert set(document["rho"]) == formats and len(formats) == 17
    assert document["rho"]["dense"] == 1.0
    assert all(0 < rho <= 1 for rho in document["rho"].values())
    assert document["objective"] <= OBJECTIVE * (1 + 1e-9)


@pytest.mark.slow
def test_quests_e_is_reported_with_the_range_that_fits_not_a_point(capsys):
    # E fixed at 0.3 fits 6.3% worse than the optimum (E ~ 0), E = 0.2 3.9% worse: the cells
    # cannot tell E = 0 from E = 0.2, and the note says so with the profile interval.
    assert main(["fit", str(QUEST_CSV), *QUEST_FLAGS, "--bootstrap", "20", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    low, high = document["ci"]["E"]
    assert low < 1e-6 and 0.2 < high < 0.3
    assert "any value in" in document["notes"]["E"]
    assert any(text.startswith("E: ") for text in document["warnings"])
