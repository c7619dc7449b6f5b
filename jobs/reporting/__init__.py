"""`jobs/report.py`: the QC report of an existing segment output, read from its manifest."""
