"""`unet-tune`: a Ray Tune search (ASHA) over training settings, each trial a Ray Train run."""
