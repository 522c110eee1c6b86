"""Write the data scientists' notebooks (kept as code so reviews see plain Python diffs).

Run: .venv/bin/python scripts/make_notebooks.py  ->  notebooks/compare_runs.ipynb, notebooks/explore_recommendations.ipynb
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"

SETUP = """\
%matplotlib inline
import matplotlib.pyplot as plt
import pandas as pd
from personalization.config import load_config

# The project configuration decides where everything is: no hard-coded paths.
config = load_config()
print("tracking:", config.mlflow_tracking_uri)
print("serving: ", config.serving_url)
print("lake:    ", config.lake_root)"""

COMPARE_RUNS = [
    new_markdown_cell("# Compare nightly runs\n\nEvery nightly run is an MLflow parent run with one nested run per model. "
                      "This notebook tabulates and plots each model's validation metrics across nights and segments, "
                      "and shows the champion's history in the registry."),
    new_code_cell(SETUP),
    new_code_cell("""\
import mlflow
from mlflow import MlflowClient

mlflow.set_tracking_uri(config.mlflow_tracking_uri)
client = MlflowClient()
experiment = client.get_experiment_by_name(config.mlflow.experiment)
assert experiment is not None, "no runs yet: run `make run` first"
runs = mlflow.search_runs(experiment_ids=[experiment.experiment_id], output_format="pandas")
# Nightly parent runs carry the chosen best model; their nested runs are one per model.
parents = runs[runs["tags.best_model"].notna()]
children = runs[runs["tags.mlflow.parentRunId"].isin(parents["run_id"])]
print(f"{len(parents)} nightly runs, {len(children)} model runs")"""),
    new_code_cell("""\
metric_columns = sorted(c for c in children.columns
                        if c.startswith("metrics.") and c.endswith("_at_10") and children[c].notna().any())
model_column = "tags.model_name" if "tags.model_name" in children else "tags.mlflow.runName"
date_of = parents.set_index("run_id")["tags.date"] if "tags.date" in parents else None
table = children[[model_column, "tags.mlflow.parentRunId", *metric_columns]].copy()
if date_of is not None:
    table["date"] = table["tags.mlflow.parentRunId"].map(date_of)
table = table.rename(columns={model_column: "model"})
table"""),
    new_code_cell("""\
ndcg = next((c for c in metric_columns if "ndcg" in c), None)
assert ndcg is not None, "no NDCG metric logged"
by_model = table.groupby("model")[ndcg].mean().sort_values()
ax = by_model.plot.barh(title=f"mean {ndcg} by model")
ax.set_xlabel(ndcg)
plt.tight_layout()
plt.show()"""),
    new_code_cell("""\
if "date" in table and table["date"].notna().any():
    trend = table.pivot_table(index="date", columns="model", values=ndcg)
    trend.plot(marker="o", title=f"{ndcg} across nightly runs")
    plt.show()
    trend"""),
    new_code_cell("""\
segment_columns = sorted(c for c in children.columns if c.startswith("metrics.") and "segment" in c)
segment_table = children[[model_column, *segment_columns]].rename(columns={model_column: "model"})
segment_table.groupby("model").mean(numeric_only=True).T if segment_columns else "no per-segment metrics logged"
"""),
    new_code_cell("""\
# Champion history: every registered version, and which one the alias points to now.
name = config.mlflow.registered_model
versions = client.search_model_versions(f"name='{name}'")
champion = client.get_model_version_by_alias(name, config.mlflow.champion_alias)
history = pd.DataFrame([{"version": int(v.version), "run_id": v.run_id, "created": pd.to_datetime(v.creation_timestamp, unit="ms"),
                         "champion": v.version == champion.version, "tags": dict(v.tags)} for v in versions]).sort_values("version")
history"""),
]

EXPLORE = [
    new_markdown_cell("# Explore recommendations\n\nLook up a user's profile, segment, insights and every surface with its reasons, "
                      "then the distributions of scores and list diversity across users."),
    new_code_cell(SETUP),
    new_code_cell("""\
from personalization.serving.db import make_engine
from personalization.lake import Lake

engine = make_engine(config.serving_url)
publish_log = pd.read_sql("SELECT * FROM publish_log ORDER BY published_at DESC", engine)
date = str(publish_log.iloc[0]["generated_for"])[:10]
lake = Lake(config)
print("live date:", date)
publish_log.head()"""),
    new_code_cell("""\
user_id = pd.read_sql("SELECT MIN(user_id) AS u FROM recommendations WHERE surface = 'for_you'", engine)["u"][0]
profiles = pd.read_parquet(lake.partition(lake.gold("profiles"), date))
segments = pd.read_parquet(lake.partition(lake.gold("segments"), date))
from personalization.privacy import lake_user_ids

lake_id = lake_user_ids(config, [user_id])[0]  # the lake and models know users by a keyed pseudonym
print("user:", user_id, "lake id:", lake_id)
profiles[profiles["user_id"] == lake_id].T.head(40)"""),
    new_code_cell("""\
segments[segments["user_id"] == lake_id]"""),
    new_code_cell("""\
from sqlalchemy import text
insights = pd.read_sql(text("SELECT * FROM user_insights WHERE user_id = :u"), engine, params={"u": user_id})
insights.T"""),
    new_code_cell("""\
surfaces = pd.read_sql(text("SELECT surface, rank, app_id, score, reason, reason_app_id FROM recommendations "
                            "WHERE user_id = :u ORDER BY surface, rank"), engine, params={"u": user_id})
surfaces"""),
    new_code_cell("""\
recs = pd.read_sql("SELECT user_id, app_id, score FROM recommendations WHERE surface = 'for_you'", engine)
apps = pd.read_parquet(lake.partition(lake.gold("app_features"), date), columns=["app_id", "category"])
recs = recs.merge(apps, on="app_id", how="left")
# Intra-list diversity by category: share of distinct-category pairs in each user's list.
def category_diversity(categories: pd.Series) -> float:
    values = categories.tolist()
    pairs = [(a, b) for i, a in enumerate(values) for b in values[i + 1:]]
    return sum(a != b for a, b in pairs) / len(pairs) if pairs else 0.0
diversity = recs.groupby("user_id")["category"].apply(category_diversity)
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
recs["score"].plot.hist(bins=40, ax=axes[0], title="for_you scores")
diversity.plot.hist(bins=20, ax=axes[1], title="intra-list category diversity")
plt.tight_layout()
plt.show()
print("mean diversity:", round(float(diversity.mean()), 3))"""),
]


def main() -> None:
    for name, cells in (("compare_runs", COMPARE_RUNS), ("explore_recommendations", EXPLORE)):
        notebook = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
        nbformat.write(notebook, NOTEBOOKS / f"{name}.ipynb")
        print("wrote", NOTEBOOKS / f"{name}.ipynb")


if __name__ == "__main__":
    main()
