"""flashclr's test suite. References live here; benchmarks/ imports them from here."""
