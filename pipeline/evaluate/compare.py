"""`python -m pipeline compare`: MLflow runs side by side.

One column per run (newest first), rows: the tags that identify it (stage, variant, git commit,
dataset), the params whose values differ between the runs (params equal everywhere are counted,
not shown), and the final value of every metric. Markdown (default) or CSV.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import PipelineError

TAGS = ["stage", "variant", "dataset", "device", "precision", "threads", "git_commit", "git_dirty"]


def runs_table(experiment: str | None, stage: str | None, last: int) -> tuple[pd.DataFrame, int]:
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    import mlflow

    from ..tracking import tracking_uri

    uri = tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///") :]).is_file():  # never create an empty store
        raise PipelineError(
            f"no MLflow store at {uri[len('sqlite:///') :]}: run a stage first, or run compare from "
            f"the project's folder (or set MLFLOW_TRACKING_URI)"
        )
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    exps = client.search_experiments()
    if experiment:
        exps = [e for e in exps if e.name == experiment]
        if not exps:
            raise PipelineError(f"no MLflow experiment named {experiment!r} in {tracking_uri()}")
    exps = [e for e in exps if e.name.startswith("synctalkface-")] or exps
    filt = f"tags.stage = '{stage}'" if stage else ""
    runs = client.search_runs(
        [e.experiment_id for e in exps], filter_string=filt, order_by=["attributes.start_time DESC"], max_results=last
    )
    if not runs:
        raise PipelineError(f"no runs found in {tracking_uri()}" + (f" for stage {stage}" if stage else ""))
    cols, params = {}, {}
    for r in runs:
        name = f"{r.info.run_name} ({r.info.run_id[:6]})"
        col = {f"tag.{t}": (r.data.tags.get(t, "")[:10] if t == "git_commit" else r.data.tags.get(t, "")) for t in TAGS}
        col.update({f"metric.{k}": v for k, v in r.data.metrics.items()})
        cols[name] = col
        params[name] = dict(r.data.params)
    keys = sorted({k for p in params.values() for k in p})
    differing = [k for k in keys if len({params[n].get(k) for n in params}) > 1]
    for name in cols:
        cols[name].update({f"param.{k}": params[name].get(k, "") for k in differing})
    table = pd.DataFrame(cols)
    order = (
        [i for i in table.index if i.startswith("tag.")]
        + sorted(i for i in table.index if i.startswith("param."))
        + sorted(i for i in table.index if i.startswith("metric."))
    )
    return table.loc[order], len(keys) - len(differing)


def render(table: pd.DataFrame, same: int, fmt: str) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if v != v else f"{v:.4g}"
        return "" if v is None else str(v)

    shown = table.map(cell) if hasattr(table, "map") else table.applymap(cell)
    if fmt == "csv":
        return shown.to_csv()
    header = "| | " + " | ".join(shown.columns) + " |\n|---|" + "---|" * len(shown.columns) + "\n"
    body = "".join(f"| {idx} | " + " | ".join(row) + " |\n" for idx, row in zip(shown.index, shown.values))
    return header + body + f"\n{same} param{' is' if same == 1 else 's are'} equal in every run shown (not listed).\n"
