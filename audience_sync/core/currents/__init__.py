"""Currents → mParticle, pure: normalise a Braze event (Custom HTTP or Avro record) to one value,
map it with the table of exported types, route it to a feed, and batch it (SPEC §6.3).

Modules, in the order an event meets them: ``events`` (normalise), ``table`` (the mapping table,
package data, overridable), ``mapping`` (one mParticle event and its user envelope), ``routing``
(which feed), ``batching`` (mParticle batches with a deterministic ``source_request_id``) and
``validation`` (the local check every batch passes before it is sent); then ``failures`` (a
failed attempt: each batch's next try or dead letter).
"""
