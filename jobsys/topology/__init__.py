"""The topology file and everything derived from it: model, loader, checks, routing simulation,
delay levels, entities, definitions. Pure: nothing here does I/O.
"""
