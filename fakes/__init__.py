"""Stand-ins that the tests and the benchmarks share: a fake OpenAI-compatible chat server and tiny
random VLMs of real architectures. Neither is product code (not in the wheel)."""
