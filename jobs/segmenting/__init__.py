"""`jobs/segment.py`: the output's layout, listing and the work list, leases, the mask writer and
the manifest; the shared prediction pipeline is in `jobs.inference`."""
