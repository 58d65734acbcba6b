"""Drivers raise the agent's driver errors; re-exported here for driver authors."""

from agent.errors import DriverError, ScannerGoneError

__all__ = ["DriverError", "ScannerGoneError"]
