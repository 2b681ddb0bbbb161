"""The digits example: a small trained CNN with calibration and validation data."""
