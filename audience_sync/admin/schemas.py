"""Marshmallow schemas of the admin API: they shape the JSON and generate the OpenAPI document.

Output schemas dump the read models of :mod:`audience_sync.store.reads` as they are; times are
epoch seconds (float), like everywhere else in the engine.
"""

from __future__ import annotations

import marshmallow as ma
from marshmallow import fields, validate

from audience_sync.admin.pagination import PageArgsSchema

Epoch = fields.Float
"""Seconds since 1970-01-01 UTC."""


def _page(name: str, item: type[ma.Schema]) -> type[ma.Schema]:
    """A page of ``item``: ``{"items": [...], "next_cursor": "..." | null}``."""
    return ma.Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item), required=True),
            "next_cursor": fields.String(
                allow_none=True,
                required=True,
                metadata={"description": "Pass as `cursor` for the next page; null at the end."},
            ),
        },
        name=name,
    )


class BacklogSchema(ma.Schema):
    pending = fields.Integer(metadata={"description": "Users waiting to be written to Braze."})
    dead = fields.Integer(metadata={"description": "Users given up on (replayable)."})
    in_flight = fields.Integer(metadata={"description": "Pending users leased by a sender now."})
    oldest_pending_at = Epoch(allow_none=True)
    oldest_pending_age_s = fields.Float(allow_none=True)
    firehose_waiting = fields.Integer(
        metadata={"description": "Firehose messages accepted, not yet applied to the state."}
    )
    firehose_oldest_at = Epoch(allow_none=True)
    firehose_oldest_age_s = fields.Float(allow_none=True)


class StatusSchema(ma.Schema):
    healthy = fields.Boolean(metadata={"description": "Database reachable, nothing suspended."})
    problems = fields.List(
        fields.String(), metadata={"description": "What needs attention, in plain words."}
    )
    version = fields.String()
    database = fields.String(metadata={"description": "sqlite or postgresql"})
    schema_current = fields.Boolean()
    connections = fields.Dict(
        keys=fields.String(), values=fields.Integer(), metadata={"description": "By state."}
    )
    audiences = fields.Integer(metadata={"description": "Active audiences."})
    users = fields.Integer()
    memberships = fields.Integer(metadata={"description": "Current (user, audience) members."})
    workspaces_suspended = fields.Integer()
    backlog = fields.Nested(BacklogSchema)
    failures_today = fields.Dict(keys=fields.String(), values=fields.Integer())
    datapoints_today = fields.Integer()
    datapoints_full_today = fields.Integer(
        metadata={"description": "What resending whole users would have cost today."}
    )
    feeds = fields.Integer(metadata={"description": "Currents feeds known."})


class ConnectionSchema(ma.Schema):
    account_id = fields.Integer(required=True)
    state = fields.String(metadata={"description": "active or invalid_settings"})
    settings = fields.Dict(metadata={"description": "Account settings, secrets shown as ***."})
    settings_errors = fields.List(fields.String())
    workspace_id = fields.Integer(allow_none=True)
    workspace_state = fields.String(allow_none=True)
    workspace_state_reason = fields.String(allow_none=True)
    audiences = fields.Integer()
    users = fields.Integer()
    members = fields.Integer()
    created_at = Epoch()
    updated_at = Epoch()


class AudienceSchema(ma.Schema):
    account_id = fields.Integer()
    audience_id = fields.Integer(required=True)
    name = fields.String()
    state = fields.String(metadata={"description": "active or removed"})
    cleanup = fields.Boolean()
    members = fields.Integer()
    last_change_at = Epoch(allow_none=True)
    created_at = Epoch()
    removed_at = Epoch(allow_none=True)
    datapoints = fields.Integer(metadata={"description": "Data points charged, all days."})
    drift = fields.Integer(
        allow_none=True,
        metadata={
            "description": "Drift findings (per user and kind) for this audience at the last "
            "finished audit; null: no audit has run."
        },
    )


class OutcomeSchema(ma.Schema):
    kind = fields.String(metadata={"description": "braze (last answer) or outbox (waiting)"})
    outcome = fields.String(allow_none=True)
    at = Epoch(allow_none=True)
    attempts = fields.Integer(allow_none=True)
    due_at = Epoch(allow_none=True)


class UserSchema(ma.Schema):
    account_id = fields.Integer()
    external_id = fields.String()
    workspace_id = fields.Integer(allow_none=True)
    audiences = fields.List(fields.Dict(), metadata={"description": "Membership rows."})
    desired = fields.Dict(required=True, metadata={"description": "What Braze should hold."})
    acknowledged = fields.Dict(required=True, metadata={"description": "What Braze confirmed."})
    pending = fields.Dict(
        required=True, metadata={"description": "The minimal write still to send."}
    )
    flags = fields.List(fields.String(), metadata={"description": "Guards that held a write."})
    outcomes = fields.List(fields.Nested(OutcomeSchema), required=True)


class DeliverySchema(ma.Schema):
    workspace_id = fields.Integer()
    external_id = fields.String()
    account_ids = fields.List(fields.Integer())
    state = fields.String()
    attempts = fields.Integer()
    last_reason = fields.String(allow_none=True)
    due_at = Epoch()
    first_failure_at = Epoch(allow_none=True)
    enqueued_at = Epoch()


class DeliveryArgsSchema(PageArgsSchema):
    state = fields.String(
        load_default=None, validate=validate.OneOf(["pending", "dead"]), allow_none=True
    )
    account_id = fields.Integer(load_default=None, allow_none=True)


class ReplayArgsSchema(ma.Schema):
    account_id = fields.Integer(
        load_default=None,
        allow_none=True,
        metadata={"description": "Only this connection's dead letters; all when omitted."},
    )


class ReplayResultSchema(ma.Schema):
    requeued = fields.Integer(required=True)


class FeedSchema(ma.Schema):
    name = fields.String()
    platform = fields.String()
    state = fields.String()
    backlog = fields.Integer()
    oldest_event_at = Epoch(allow_none=True)
    oldest_event_age_s = fields.Float(allow_none=True)
    last_error = fields.String(allow_none=True)


class JobRunSchema(ma.Schema):
    id = fields.Integer()
    job = fields.String()
    state = fields.String()
    started_at = Epoch()
    finished_at = Epoch(allow_none=True)
    summary = fields.Dict()
    error = fields.String(allow_none=True)


class DatapointsSchema(ma.Schema):
    day = fields.String(metadata={"description": "UTC day, YYYY-MM-DD"})
    account_id = fields.Integer()
    audience_id = fields.Integer(metadata={"description": "0: not attributable to an audience"})
    audience_name = fields.String(allow_none=True)
    points = fields.Integer()


class DatapointsArgsSchema(PageArgsSchema):
    account_id = fields.Integer(load_default=None, allow_none=True)
    day_from = fields.Date(load_default=None, data_key="from", allow_none=True)
    day_to = fields.Date(load_default=None, data_key="to", allow_none=True)


ConnectionPageSchema = _page("ConnectionPage", ConnectionSchema)
AudiencePageSchema = _page("AudiencePage", AudienceSchema)
DeliveryPageSchema = _page("DeliveryPage", DeliverySchema)
FeedPageSchema = _page("FeedPage", FeedSchema)
JobRunPageSchema = _page("JobRunPage", JobRunSchema)
DatapointsPageSchema = _page("DatapointsPage", DatapointsSchema)
