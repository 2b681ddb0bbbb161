"""Single-process verbs everything else is built from: calibrate, build, evaluate, measure."""
