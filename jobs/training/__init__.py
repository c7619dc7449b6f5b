"""`jobs/train.py` in stages: driver-side data checks, Ray datasets and per-worker batches,
the loop every Ray Train worker runs, rank-0 MLflow tracking, checkpoints, and the publish at
the end of a run (figures, registration, alias gate). `job.run_training` ties them together."""
