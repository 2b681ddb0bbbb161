"""Everything that talks to Ray: the cluster connection, calibration shards and
evaluator actors. The only package that imports ``ray``."""
