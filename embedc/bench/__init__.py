"""Benchmarks: every subject in its own process, side by side with torch FP32."""
