"""The ground floor: what every layer may import (errors a user must act on, the one-line error guard,
settings, the process environment of an entry point). Imports nothing of the project above it and
nothing heavy (no Prefect), so an entry point can use it before Prefect reads the environment."""
