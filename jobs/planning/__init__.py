"""`jobs/plan.py`: a fingerprint of a labelled data set (sizes, channels, intensities, classes,
objects, layout, name groups), computed by Ray Data tasks whose partial tallies the driver
merges."""
