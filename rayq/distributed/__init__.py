"""Everything that talks to Ray: the cluster connection, calibration shards,
candidate evaluation and the worker-resident state both keep. The only package
that imports ``ray``."""
