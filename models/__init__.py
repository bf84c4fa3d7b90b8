"""Pure, synchronous features and models: no I/O happens in this package."""
