"""The prediction pipeline `jobs/segment.py` and `jobs/evaluate.py` share: their config, the
session (cluster, predictor actor pool, dry-run reports), decode tasks and predictor actors."""
