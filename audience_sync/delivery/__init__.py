"""Senders: claim dirty users, diff, batch, send to Braze, record outcomes (SPEC §5)."""
