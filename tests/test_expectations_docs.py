"""Incremental Data Docs: a run renders its own pages and the index, not every stored result."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from jobs.expectations.docs import build_run_docs


def _validate(context, run_name: str) -> None:
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.core.run_identifier import RunIdentifier

    source = context.data_sources.add_or_update_pandas("frames")
    asset = next((a for a in source.assets if a.name == "frame"), None) or source.add_dataframe_asset("frame")
    batch = next((b for b in asset.batch_definitions if b.name == "whole"), None)
    batch = batch or asset.add_batch_definition_whole_dataframe("whole")
    suite = context.suites.add_or_update(
        gx.ExpectationSuite(name="tiny", expectations=[gxe.ExpectColumnValuesToNotBeNull(column="x")])
    )
    definition = context.validation_definitions.add_or_update(gx.ValidationDefinition(name="tiny", data=batch,
                                                                                      suite=suite))
    definition.run(batch_parameters={"dataframe": pd.DataFrame({"x": [1, 2]})}, run_id=RunIdentifier(run_name))


def _pages(docs: Path, run_name: str) -> list[Path]:
    return sorted((docs / "validations" / "tiny" / run_name).rglob("*.html"))


def test_second_run_renders_only_its_own_page(tmp_path):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    docs = tmp_path / "data_docs"
    context = gx.get_context(mode="file", project_root_dir=str(tmp_path))
    context.variables.data_docs_sites = {
        "site": {"class_name": "SiteBuilder", "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                                                "base_directory": str(docs)}}
    }
    context.variables.save()

    _validate(context, "night-1")
    build_run_docs(context, ["site"], str(docs), "night-1", ["tiny"])  # no site yet: full build
    assert len(_pages(docs, "night-1")) == 1
    assert (docs / "index.html").exists()
    first_page = _pages(docs, "night-1")[0]
    first_page.write_text("kept")  # an incremental build must not render night-1 again

    _validate(context, "night-2")
    build_run_docs(context, ["site"], str(docs), "night-2", ["tiny"])
    assert first_page.read_text() == "kept"
    assert len(_pages(docs, "night-2")) == 1
    index = (docs / "index.html").read_text()
    assert "night-1" in index and "night-2" in index  # the index still links every stored result
