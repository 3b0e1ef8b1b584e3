"""Source adapters: what upstream systems already emit, turned into canonical events."""
