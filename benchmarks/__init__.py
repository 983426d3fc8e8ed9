"""Speed benchmarks: each prints a table against a named baseline measured in the same run."""
