"""Braze Currents → us (SPEC §6.1, §6.2): ``POST /currents`` (views), the Avro reader, the file
importer, and the intake service both feed into the queue of :mod:`audience_sync.store.currents`."""
