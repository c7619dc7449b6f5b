"""The Ray and MLflow side of unet-ray: entry scripts here, their glue in one room per stage.

train.py, segment.py, evaluate.py,      parse a config, call one function, print its summary
report.py, export.py, demo.py, plan.py
common/      what every job needs: Ray connection and sizing, filesystems, MLflow URIs, the
             registered model read (model_source), flags from dataclasses, logging set-up
training/    jobs/train.py: data checks, Ray datasets, the per-worker loop, rank-0
             tracking, checkpoints, the end-of-run publish (figures, registry, alias gate)
inference/   the prediction pipeline segment and evaluate share: config, session (cluster,
             actor pool, dry runs), decode tasks, predictor actors
segmenting/  jobs/segment.py: output layout, listing and work list, leases, mask writer,
             manifest
evaluating/  jobs/evaluate.py: scoring against truth masks, the per-image scores file
reporting/   jobs/report.py: the QC report of a segment output
exporting/   jobs/export.py: ONNX / pt2 files, checked and logged
planning/    jobs/plan.py: the fingerprint of a data set (Ray Data tasks' tallies merged on the
             driver), groups of near-duplicate names
"""
