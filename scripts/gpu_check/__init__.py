"""The GPU check (scripts/gpu_check.sh): one prepared run of every GPU measurement; see __main__."""
