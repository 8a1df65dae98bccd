"""The mParticle Firehose endpoint (SPEC §3)."""
