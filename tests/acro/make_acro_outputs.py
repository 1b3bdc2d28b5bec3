"""Run inside a throwaway notebook-image container (network none, uid 1000) to make ACRO's own verdicts.

Usage: python make_acro_outputs.py OUT_DIR [SEED ...]   (one OUT_DIR/seed-<SEED>/ per seed)

Generates seeded microdata, builds frequency, mean and sum tables with the ``acro`` package installed
in the image (suppression off, so every cell is written), and a regression; then writes:

- OUT_DIR/seed-<SEED>/acro/results.json      ACRO's own results file (``acro.finalise``)
- OUT_DIR/seed-<SEED>/tables/<name>.csv     each table flattened to a plain CSV (first column: the row label)
- OUT_DIR/seed-<SEED>/verdicts.json      {name: {"kind": ..., "cells": {check: [[row, col], ...]}}} from ACRO

tests/acro/results-acro-1.0.2.json is seed-20261201/acro/results.json, made with the notebook image of
this commit's images/notebook/requirements.txt (acro 1.0.2):

    docker run --rm --network none -u 1000:1000 -v $PWD/tests/acro:/src:ro -v /tmp/out:/out -w /tmp \
        enclave/notebook:0.1 python /src/make_acro_outputs.py /out 20261201

Row and column positions are ACRO's: 0-based over the table's data cells, without the label column.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd
from acro import ACRO


def microdata(seed: int, n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    region = rng.choice(["Seoul", "Busan", "Jeju", "Ulsan", "Sejong"], size=n, p=[0.5, 0.25, 0.1, 0.1, 0.05])
    frame = pd.DataFrame(
        {
            "region": region,
            "sex": rng.choice(["F", "M"], size=n),
            "agegroup": rng.choice(["age_18_39", "age_40_49", "age_50_64", "age_65_plus"], size=n),
            "cost": rng.integers(1000, 90000, size=n),
            "bmi": rng.normal(26.0, 4.0, size=n).round(1),
            "dx": rng.choice(["I10", "E11", "C50", "G35", "Q90"], size=n, p=[0.6, 0.3, 0.07, 0.02, 0.01]),
        }
    )
    # one dominant contributor: NK and p% must fire on its cell
    frame.loc[0, ["region", "sex", "cost"]] = ["Seoul", "F", 5_000_000]
    return frame


def flat(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out.columns = [str(c) for c in out.columns]
    out.index = [str(i) for i in out.index]
    out.index.name = "label"
    return out


def main(out: str, seed: int) -> None:
    df = microdata(seed)
    acro = ACRO(suppress=False)
    made: dict[str, tuple[str, pd.DataFrame, str]] = {}

    def table(name: str, kind: str, frame: pd.DataFrame) -> None:
        made[name] = (kind, frame, acro.results.get_keys()[-1])

    table("freq_region_sex", "count", acro.crosstab(df.region, df.sex))
    table("freq_region_age", "count", acro.crosstab(df.region, df.agegroup))
    table("mean_cost", "mean", acro.crosstab(df.region, df.sex, values=df.cost, aggfunc="mean"))
    table("sum_cost", "sum", acro.crosstab(df.region, df.sex, values=df.cost, aggfunc="sum"))
    table("mean_bmi_age", "mean", acro.crosstab(df.region, df.agegroup, values=df.bmi, aggfunc="mean"))
    acro.ols(df.bmi, pd.DataFrame({"const": 1.0, "cost": df.cost / 1000}))
    table("freq_region_dx", "count", acro.crosstab(df.region, df.dx))
    table("freq_region_age_margins", "count", acro.crosstab(df.region, df.agegroup, margins=True))
    # ACRO's own suppression: the cells it hides are blank, and its margins leave them out
    acro.enable_suppression()
    table("suppressed_region_age_margins", "suppressed", acro.crosstab(df.region, df.agegroup, margins=True))
    acro.disable_suppression()
    os.makedirs(f"{out}/tables", exist_ok=True)
    verdicts = {}
    for name, (kind, frame, key) in made.items():
        flat(frame).to_csv(f"{out}/tables/{name}.csv")
        sdc = acro.results.get(key).sdc
        verdicts[name] = {"kind": kind, "acro_output": key, "cells": sdc.get("cells", {})}
    acro.finalise(f"{out}/acro", "json")
    with open(f"{out}/verdicts.json", "w", encoding="utf-8") as handle:
        json.dump(verdicts, handle, indent=1)


if __name__ == "__main__":
    for seed in sys.argv[2:] or ["20261201"]:
        main(f"{sys.argv[1]}/seed-{seed}", int(seed))
