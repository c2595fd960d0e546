"""Built-in studies: ``criteria`` (torch text classifier) and ``toy`` (no torch, smoke runs)."""
