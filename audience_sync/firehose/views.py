"""Placeholder blueprint, replaced by the Firehose implementation."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("firehose", __name__)
