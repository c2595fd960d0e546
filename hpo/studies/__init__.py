"""Built-in studies: ``criteria`` (a torch text classifier) and ``toy`` (no torch, for smoke runs)."""
