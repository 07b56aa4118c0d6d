"""`make bench`: the gateway measured against a direct call and an nginx hop."""
