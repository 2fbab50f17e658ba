"""Running a stage: config, entry-point arguments, loop, EMA, data parallelism, logs, export."""
