"""Storage: tables, migrations and the repositories that read and write them (SPEC §9)."""
