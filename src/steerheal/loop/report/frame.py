"""The per-round metrics as a polars table (one row a round, one column a metric) and polars' markdown of a
table: what the benchmarks (bench/toyworld_method.py, bench/toyworld_report.py) summarise and print."""

from __future__ import annotations

import math
from typing import Any

import polars as pl

from steerheal.loop.report.events import round_events
from steerheal.loop.rundir import RunDir


def _num(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def table(run: RunDir) -> pl.DataFrame:
    rows = []
    for event in round_events(run):
        m = event["metrics"]
        row = {
            "round": event["round"],
            "c*": m["dose"]["c"],
            "alpha": m["dose"]["alpha"],
            "pairs kept": f"{m['dose']['kept']}/{m['dose']['pairs']}",
            "lam": m["heal"]["lam"],
            "trait base": m["trait"]["base"],
            "trait steered": m["trait"]["steered"],
            "trait student": m["trait"]["student"],
            "retain": _num(m["retain"]),
            "off-target moved": m["off_target"]["moved"],
            "KL(student‖base) p95": m["coherence"]["kl_tail_p95"],
            "distinct-2": m["coherence"]["distinct_2"],
            "ppl under base": m["coherence"]["ppl_under_base"],
            "cos(v, v0)": m["direction"]["cos_to_round0_mean"],
            "noise ceiling": m["direction"]["noise_ceiling_mean"],
            "internalisation cos": m["internalisation"]["cos_mean"],
        }
        if "truth" in m:
            truth = m["truth"]
            row.update(
                {
                    "mood base": truth["base"]["mood_rate"],
                    "mood steered": truth["steered"]["mood_rate"],
                    "mood student": truth["student"]["mood_rate"],
                    "retain (mood)": _num(m["retain_mood"]),
                    "off-target mood base": truth["base"]["off_target_mood_rate"],
                    "off-target mood student": truth["student"]["off_target_mood_rate"],
                    "grammar student": truth["student"]["grammar_ok"],
                    "grammar steered": truth["steered"]["grammar_ok"],
                }
            )
        if "readout" in m:
            row.update(
                {
                    "readout cos": m["readout"]["cos_mean"],
                    "readout AUROC base": m["readout"]["auroc_base_mean"],
                    "readout AUROC student": m["readout"]["auroc_student_mean"],
                }
            )
        row["stop"] = event.get("stop") or ""
        rows.append(row)
    return pl.DataFrame(rows)


def markdown(df: pl.DataFrame) -> str:
    with pl.Config(
        tbl_formatting="MARKDOWN",
        tbl_hide_column_data_types=True,
        tbl_hide_dataframe_shape=True,
        tbl_rows=-1,
        tbl_cols=-1,
        float_precision=3,
        fmt_str_lengths=120,
        tbl_width_chars=1000,
    ):
        return str(df)
