"""The mParticle Events API client (``/v2/bulkevents``): request packing, outcome
classification and rate budget (pure), and a thin client on the shared transport.
Imports neither core nor store (ARCHITECTURE.md)."""
