"""Chat: one room per stream over WebSocket (/chat/<stream>), moderated, persisted with
the broadcast, replayed in sync with recordings. ``protocol`` is the event schema,
``room`` the sans-I/O room rules, ``hub`` the connections and the bus fan-out."""
