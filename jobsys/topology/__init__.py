"""The topology file: model, loader, checks, routing simulation, delay plan, declare."""
