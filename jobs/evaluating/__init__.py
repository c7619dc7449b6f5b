"""`jobs/evaluate.py`: a model scored on labelled pairs through the shared prediction pipeline,
with a per-image scores file."""
