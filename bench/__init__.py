"""umprobe benchmarks: figures and ratios against named peers measured in one run (bench/README.md)."""
