"""wdys: What Do You See? as a Prefect batch pipeline; the `wdys` command lives in `wdys.cli`."""
