"""`jobs/segment.py` and `jobs/evaluate.py` in stages: the shared config, the model source,
input listing and skip planning, the Ray Data pipeline (decode tasks, predictor actors), the
mask writer and manifest, and scoring against truth masks."""
