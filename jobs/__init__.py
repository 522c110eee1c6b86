"""Spark jobs: pure DataFrame transforms plus a thin main(config, date) each."""
