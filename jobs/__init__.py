"""The Ray and MLflow side of unet-ray: entry scripts here, their glue in three rooms.

train.py, segment.py, evaluate.py, demo.py   parse a config, call one function, print it
common/      what every job needs: Ray connection and sizing, filesystems, MLflow URIs,
             flags from dataclasses, logging set-up
training/    jobs/train.py: data checks, Ray datasets, the per-worker loop, rank-0
             tracking, checkpoints, the end-of-run publish (figures, registry, alias gate)
inference/   jobs/segment.py and jobs/evaluate.py: inputs, the Ray Data pipeline (decode,
             predictor actors, writer or scorer), manifest, model source
"""
