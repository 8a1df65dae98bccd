"""``python -m audience_sync`` is the ``audience-sync`` command."""

from audience_sync.cli import main

main()
