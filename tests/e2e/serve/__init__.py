"""The Serve app end to end: one Ray + Serve instance shared by this package's modules."""
