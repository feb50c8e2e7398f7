"""HTTP in and out: a module per resource."""
