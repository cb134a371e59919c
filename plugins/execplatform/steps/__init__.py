"""The task callables of the DAGs, one module per concern (named for what its steps do): each
step reaches its services through the hooks and calls the domain library in `include`."""
