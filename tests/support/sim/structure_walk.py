"""Walks a Loxone structure file (LoxAPP3.json) for the interoperability probes."""


def count_controls(controls):
    """Controls and their sub-controls, at every depth."""
    n = 0
    for c in (controls or {}).values():
        n += 1
        n += count_controls(c.get("subControls"))
    return n


def find_switch(controls):
    """(uuidAction, uuid of its `active` state) of the first Switch, or None."""
    for key, c in (controls or {}).items():
        if c.get("type") == "Switch" and "active" in (c.get("states") or {}):
            return c.get("uuidAction", key), c["states"]["active"]
        sub = find_switch(c.get("subControls"))
        if sub:
            return sub
    return None
