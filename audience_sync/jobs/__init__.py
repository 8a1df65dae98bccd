"""APScheduler jobs (SPEC §7): the scheduler, the singleton lease, one module per job."""
