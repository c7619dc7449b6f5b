"""Pieces every job shares: connecting to Ray and sizing its resources, the one filesystem/S3
factory, MLflow tracking and registry URIs, flags from typed dataclasses, logging set-up."""
