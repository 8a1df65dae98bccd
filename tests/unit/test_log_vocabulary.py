"""Every log ``action`` the package writes comes from the one vocabulary in telemetry.py."""

from __future__ import annotations

import ast
from pathlib import Path

import audience_sync
from audience_sync.telemetry import Action

PACKAGE = Path(audience_sync.__file__).parent


def _strings(node: ast.AST) -> list[str]:
    """String constants an ``action`` value can take (literal, ``a if c else b``, Action.X)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        if node.value.id == "Action":
            return [Action[node.attr].value]
    return []


def logged_actions() -> dict[str, list[str]]:
    """``action -> [file:line, ...]`` for every ``extra={"action": ...}`` in the package."""
    found: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call):
                continue
            for keyword in call.keywords:
                if keyword.arg != "extra" or not isinstance(keyword.value, ast.Dict):
                    continue
                for key, value in zip(keyword.value.keys, keyword.value.values, strict=True):
                    if isinstance(key, ast.Constant) and key.value == "action":
                        where = f"{path.relative_to(PACKAGE)}:{call.lineno}"
                        for word in _strings(value):
                            found.setdefault(word, []).append(where)
    return found


def test_every_logged_action_is_in_the_vocabulary():
    found = logged_actions()
    assert len(found) >= 20, "the scan found too little to be trusted"
    unknown = {word: where for word, where in found.items() if word not in set(Action)}
    assert not unknown, f"add these to telemetry.Action: {unknown}"


def test_the_scan_sees_the_main_paths():
    used = set(logged_actions())
    for word in ("braze_batch_sent", "firehose_accepted", "delivery_gave_up", "admin_replay"):
        assert word in used
