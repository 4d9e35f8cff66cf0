"""Benchmarks behind `anydistill bench ...`: speed, memory and error, with machine info."""
