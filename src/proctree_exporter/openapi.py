"""The OpenAPI 3.1 description of the HTTP API, served at ``/api/v1/openapi.json``.

Built from the code's own vocabularies (:class:`.EventKind`, :class:`.ProcessClass`,
:class:`.ActionOutcome`, the selector kinds, the root name pattern, the fields of
:class:`.RootEvent`, the tree page's assets), so a new kind, class or event field
changes the document with it; a field of :class:`.RootEvent` that this module does
not describe stops :func:`document` with a KeyError instead of going undocumented.
``tests/test_openapi_kernel.py`` checks every response of a real daemon against it.

Objects are described open (no ``additionalProperties: false``): the API is
extended, not renamed, and a client should ignore fields it does not know. The
test closes them, so a field the daemon sends is never missing from here.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from . import __version__, ui
from .actions import ActionOutcome
from .classification import LIVE_CLASSES, ProcessClass
from .config import RootConfig
from .events import EventKind, RootEvent
from .rootspec import SELECT_KINDS
from .stream import ERROR_REASONS, STREAM_KINDS
from .tree import (
    LINEAGE_FORK,
    LINEAGE_LATE,
    LINEAGE_POLL,
    LINEAGE_RESTORED,
    LINEAGE_RESYNC,
    LINEAGE_SNAPSHOT,
)

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
LINEAGE_SOURCES = (LINEAGE_FORK, LINEAGE_SNAPSHOT, LINEAGE_RESYNC, LINEAGE_LATE, LINEAGE_POLL,
                   LINEAGE_RESTORED)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: list[str] | tuple[str, ...] = (),
         description: str | None = None) -> Schema:
    doc: Schema = {"type": "object"}
    if description:
        doc["description"] = description
    if required:
        doc["required"] = list(required)
    doc["properties"] = properties
    return doc


def _values(enum: Any) -> list[str]:
    return [str(e.value) for e in enum]


_INT = {"type": "integer"}
_COUNT = {"type": "integer", "minimum": 0}
_NUM = {"type": "number"}
_STR = {"type": "string"}
_BOOL = {"type": "boolean"}
_TS = {"type": "number", "description": "Wall-clock time, seconds since the epoch."}


def _nullable(schema: Schema) -> Schema:
    out = dict(schema)
    out["type"] = [schema["type"], "null"]
    return out


def _root_name() -> Schema:
    pattern = RootConfig.model_json_schema()["properties"]["name"]["pattern"]
    return {"type": "string", "pattern": pattern,
            "description": "A configured root's name (config.yaml `roots[].name`)."}


# -- events ----------------------------------------------------------------------------

# every field of RootEvent, as RootEvent.to_dict() writes it (fields that are None are
# left out, so none of these is ever null)
_EVENT_FIELDS: dict[str, Schema] = {
    "kind": {"type": "string", "enum": list(STREAM_KINDS)},
    "root": _STR,
    "seq": {"type": "integer", "minimum": 1,
            "description": "The event's position in its root's change log, from 1."},
    "ts": {"type": "number", "description": "When it happened, wall-clock seconds since the "
                                            "epoch (the kernel's time for joins and exits)."},
    "pid": {"type": "integer", "minimum": 0,
            "description": "The process the event is about (0 for root events "
                           "without one, such as root_removed)."},
    "start_ticks": {"type": "integer", "minimum": 0,
                    "description": "Its start time in clock ticks since boot: with the pid, "
                                   "an identity that survives pid reuse."},
    "comm": {"type": "string", "description": "Its name now (after an exec: the new one); "
                                              "absent when unknown."},
    "exe": _STR,
    "cmdline": {"type": "string", "description": "Only for roots with capture_cmdline."},
    "uid": _COUNT,
    "ppid": {"type": "integer", "minimum": 0, "description": "The current parent."},
    "lineage_ppid": {"type": "integer", "minimum": 0, "description": "The fork parent."},
    "lineage_start": {"type": "integer", "minimum": 0,
                      "description": "The fork parent's start_ticks."},
    "lineage_known": {"type": "boolean",
                      "description": "False: first seen under PID 1 or a younger parent, so "
                                     "the fork parent is a guess."},
    "lineage_source": {"type": "string", "enum": list(LINEAGE_SOURCES),
                       "description": "Where the fork parent was learnt: a FORK event, the "
                                      "start-up snapshot, a resync, late (first seen at "
                                      "EXEC or in /proc), or restored (the state file of an "
                                      "earlier run)."},
    "depth": {"type": "integer", "minimum": 0,
              "description": "Generations below its instance (0: an instance)."},
    "started_at": _TS,
    "ancestors": {"type": "array", "items": _ref("EventAncestor"),
                  "description": "An instance's lineage ancestors outside the root at the "
                                 "time it joined, nearest first."},
    "prev_comm": _STR,
    "prev_exe": _STR,
    "prev_cmdline": _STR,
    "prev_ppid": _COUNT,
    "old_class": _ref("ProcessClass"),
    "new_class": _ref("ProcessClass"),
    "other_pid": {"type": "integer", "minimum": 0,
                  "description": "The process a class change is about: an orphan's dead "
                                 "parent, a zombie's parent that fails to reap it, the new "
                                 "holder of a reused pid."},
    "other_start_ticks": _COUNT,
    "other_comm": _STR,
    "seconds": {"type": "number", "description": "How long a zombie has been unreaped."},
    "exit_code": _INT,
    "exit_signal": _COUNT,
    "core_dumped": _BOOL,
    "signal": {"type": "integer", "minimum": 1, "description": "The signal number sent."},
    "outcome": _ref("ActionOutcome"),
    "instances": {"type": "integer", "minimum": 0,
                  "description": "Live instances after the event."},
    "count": _COUNT,
}
_EVENT_COMMON = ("kind", "root", "seq", "ts", "pid", "start_ticks", "reason")

# what each kind sets: (always, sometimes) beyond the common fields and comm
# (the table of src/proctree_exporter/events.py); "old" and "new" are the first API's
_KIND_FIELDS: dict[EventKind, tuple[tuple[str, ...], tuple[str, ...]]] = {
    EventKind.JOINED: (("ppid", "lineage_known", "lineage_source", "depth", "started_at"),
                       ("exe", "cmdline", "uid", "lineage_ppid", "lineage_start",
                        "ancestors")),
    EventKind.EXEC: ((), ("exe", "cmdline", "uid", "prev_comm", "prev_exe", "prev_cmdline")),
    EventKind.REPARENTED: (("ppid", "prev_ppid"), ()),
    EventKind.EXITED: (("depth",), ("exit_code", "exit_signal", "core_dumped")),
    EventKind.CLASS: (("old_class", "new_class", "old", "new"),
                      ("ppid", "other_pid", "other_start_ticks", "other_comm", "seconds")),
    EventKind.ACTION: (("signal", "outcome", "new"), ()),
    EventKind.RESTART: (("old", "new"), ()),
    EventKind.ROOT_UP: (("instances",), ()),
    EventKind.ROOT_DOWN: (("instances",), ()),
    EventKind.ROOT_REMOVED: ((), ()),
    EventKind.LEFT: ((), ()),
}


def _event_schema() -> Schema:
    missing = set(RootEvent._fields) - set(_EVENT_FIELDS)
    if missing:
        raise KeyError(f"RootEvent fields without a schema: {sorted(missing)}")
    props: dict[str, Schema] = {k: _EVENT_FIELDS[k] for k in RootEvent._fields}
    props["reason"] = {"type": "string", "description": "The event as a sentence, built from "
                                                        "its fields (never parse it)."}
    props["user"] = {"type": "string", "description": "The user name of uid (the uid when "
                                                      "it has none); with uid."}
    props["old"] = {"type": "string", "description": "First API: the class before (class), "
                                                     "`exited` (restart)."}
    props["new"] = {"type": "string", "description": "First API: the class after (class), the "
                                                     "outcome (action), `restarted` (restart)."}
    legacy = {
        EventKind.CLASS: {"old": _ref("ProcessClass"), "new": _ref("ProcessClass")},
        EventKind.ACTION: {"new": _ref("ActionOutcome")},
        EventKind.RESTART: {"old": {"const": "exited"}, "new": {"const": "restarted"}},
    }
    per_kind = []
    for kind in STREAM_KINDS:
        always, sometimes = _KIND_FIELDS[EventKind(kind)]
        optional = (*sometimes, "user") if "uid" in sometimes else sometimes
        then: Schema = {"propertyNames": {"enum": [*_EVENT_COMMON, "comm", *always,
                                                   *optional]}}
        if always:
            then["required"] = list(always)
        if kind in legacy:
            then["properties"] = legacy[EventKind(kind)]
        per_kind.append({"if": {"properties": {"kind": {"const": kind}}}, "then": then})
    schema = _obj(props, _EVENT_COMMON, description=(
        "One change to one root (RootEvent.to_dict(), plus the first API's `old` and "
        "`new` for class changes, actions and restarts). Fields that do not apply, or "
        "are unknown, are left out; which fields each kind carries is spelt out per "
        "kind below (`allOf`), and in README.md, *Library*."))
    schema["allOf"] = per_kind
    return schema


# -- members and roots -----------------------------------------------------------------

def _member_props() -> dict[str, Schema]:
    return {
        "pid": _COUNT,
        "start_ticks": _COUNT,
        "comm": _nullable(_STR),
        "exe": _nullable(_STR),
        "cmdline": {"type": "string",
                    "description": "Only for roots with capture_cmdline (absent otherwise)."},
        "user": {"type": "string", "description": "The user name, the uid when it has none, "
                                                  "`?` when unknown."},
        "ppid": {"type": "integer", "minimum": 0, "description": "The current parent."},
        "lineage_ppid": {"type": ["integer", "null"], "minimum": 0,
                         "description": "The fork parent."},
        "lineage_start": {"type": ["integer", "null"], "minimum": 0,
                          "description": "The fork parent's start time (ticks since boot): "
                                         "with lineage_ppid, its identity."},
        "lineage_known": _EVENT_FIELDS["lineage_known"],
        "lineage_source": _EVENT_FIELDS["lineage_source"],
        "depth": _EVENT_FIELDS["depth"],
        "class": _ref("ProcessClass"),
        "reason": _STR,
        "started_at": _TS,
        "exited_at": {"type": ["number", "null"], "description": "null while it lives."},
        "exit_code": {"type": ["integer", "null"]},
        "exit_signal": {"type": ["integer", "null"], "minimum": 0},
        "cpu_seconds": {"type": ["number", "null"], "minimum": 0,
                        "description": "Its own CPU time (user + system) at the last resource "
                                       "sample; null when exited, before its first sample, or "
                                       "with resources off. In members, tombstones and tree "
                                       "nodes."},
        "rss_bytes": {"type": ["integer", "null"], "minimum": 0,
                      "description": "Its resident memory at the last resource sample; null "
                                     "as for cpu_seconds."},
    }


_MEMBER_REQUIRED = ("pid", "start_ticks", "comm", "exe", "user", "ppid", "lineage_ppid",
                    "lineage_start", "lineage_known", "lineage_source", "depth", "class",
                    "reason", "started_at", "exited_at", "exit_code", "exit_signal")


def _root_props() -> dict[str, Schema]:
    return {
        "name": _ref("RootName"),
        "seq": {"type": "integer", "minimum": 0,
                "description": "The root's change-log position this document is true at: "
                               "stream from here with `/api/v1/events?since=NAME:SEQ`."},
        "select": {"type": "string", "enum": list(SELECT_KINDS)},
        "match": _STR,
        "include_root": {"type": "boolean",
                         "description": "Whether the instances themselves are members."},
        "up": {"type": "boolean", "description": "A process matching the root is alive."},
        "instances": {"type": "array", "items": _ref("Instance")},
        "member_count": {"type": "integer", "minimum": 0,
                         "description": "Live members now, listed or not (zombies: see "
                                        "`classes`)."},
        "classes": _ref("ClassCounts"),
        "spawned_total": _COUNT,
        "exited_total": _COUNT,
        "restarts_total": _COUNT,
        "truncated": {"type": "boolean",
                      "description": "More live members than the root's max_members."},
        "warnings": {"type": "array", "items": _STR,
                     "description": "Why the root is down, if known (empty while up)."},
        "runtime": {"type": "boolean",
                    "description": "Added at run time (write API), not by config.yaml."},
        "confidence": {"type": "string", "enum": ["exact", "degraded"],
                       "description": "exact: every live member below an instance was "
                                      "placed by a fork event; degraded: /proc placed some "
                                      "(see inferred_members)."},
        "confidence_reason": {"type": "string", "description": "Why degraded ('' when "
                                                               "exact)."},
        "inferred_members": {"type": "object",
                             "additionalProperties": {"type": "integer", "minimum": 1},
                             "propertyNames": {"enum": ["snapshot", "resync", "late", "poll"]},
                             "description": "Live members placed by /proc, by lineage "
                                            "source."},
    }


_ROOT_REQUIRED = ("name", "seq", "select", "match", "include_root", "up", "instances",
                  "member_count", "classes", "spawned_total", "exited_total", "restarts_total",
                  "truncated", "warnings", "runtime", "confidence", "confidence_reason",
                  "inferred_members")


def _schemas() -> dict[str, Schema]:
    member_props = _member_props()
    detail = _root_props()
    detail["members"] = {"type": "array", "items": _ref("Member"),
                         "description": "Live members, then zombies; at most max_members, "
                                        "the shallowest first."}
    detail["recent"] = {"type": "array", "items": _ref("RecentChange"),
                        "description": "The last membership changes, oldest first."}
    detail["tombstones"] = {"type": "array", "items": _ref("Member"),
                            "description": "Exited members still kept, zombies excepted."}
    detail["events"] = {"type": "array", "items": _ref("Event"),
                        "description": "The last class changes, restarts and actions."}
    live = [str(c) for c in LIVE_CLASSES]
    return {
        "Error": _obj({"error": _STR}, ["error"]),
        "WriteError": _obj({"error": _STR,
                            "key": {"type": "string",
                                    "description": "The request's key to blame, when one "
                                                   "is (a root key, name, pid, "
                                                   "start_ticks, grace_seconds)."}},
                           ["error"]),
        "RootSpec": _root_spec(),
        "KillReport": _obj({
            "root": _ref("RootName"),
            "target": {"type": "string", "enum": ["tree", "process"]},
            "method": {"type": "string", "enum": ["signals", "cgroup.kill"],
                       "description": "cgroup.kill: the SIGKILL step wrote the cgroup's "
                                      "cgroup.kill (a cgroup root)."},
            "grace_seconds": {"type": "number", "minimum": 0},
            "complete": {"type": "boolean", "description": "Every process meant is gone."},
            "seconds": {"type": "number", "minimum": 0},
            "processes": {"type": "array", "items": _ref("KilledProcess")},
            "remaining": {"type": "integer", "minimum": 0,
                          "description": "Members still alive at the end."}},
            ["root", "target", "method", "grace_seconds", "complete", "seconds",
             "processes", "remaining"], description="What a kill did, per process."),
        "KilledProcess": _obj({
            "pid": _COUNT, "start_ticks": _COUNT, "comm": _nullable(_STR),
            "depth": {"type": "integer", "minimum": 0},
            "signals": {"type": "array",
                        "items": {"type": "string",
                                  "enum": ["SIGTERM", "SIGKILL", "cgroup.kill"]},
                        "description": "What reached it, in order."},
            "outcome": {"type": "string",
                        "enum": ["exited", "killed", "gone", "survived", "protected",
                                 "identity_changed", "not_permitted", "failed"],
                        "description": "exited: after SIGTERM; killed: after SIGKILL or "
                                       "cgroup.kill; gone: before any signal; survived: "
                                       "alive at the end; protected: PID 1 or the exporter, "
                                       "never signalled; identity_changed: its pid is "
                                       "another process's now (not signalled); "
                                       "not_permitted: not the socket client's own process; "
                                       "failed: the kernel refused."}},
            ["pid", "start_ticks", "comm", "depth", "signals", "outcome"]),
        "Removed": _obj({"root": _ref("RootName"), "removed": {"const": True},
                         "kill": {"oneOf": [_ref("KillReport"), {"type": "null"}],
                                  "description": "With kill=true: the kill's report."}},
                        ["root", "removed", "kill"]),
        "RootName": _root_name(),
        "ProcessClass": {"type": "string", "enum": _values(ProcessClass),
                         "description": "healthy; orphaned (its fork parent exited); zombie "
                                        "(exited, unreaped past the grace); exited "
                                        "(a tombstone); pid_reused (a tombstone whose pid "
                                        "another process has now)."},
        "ActionOutcome": {"type": "string", "enum": _values(ActionOutcome)},
        "ClassCounts": _obj({c: _COUNT for c in live}, live,
                            description="Live listed members by class, and zombies."),
        "Instance": _obj({"pid": _COUNT, "start_ticks": _COUNT, "comm": _nullable(_STR),
                          "started_at": _TS},
                         ["pid", "start_ticks", "comm", "started_at"],
                         description="A live process that matches the root's selector."),
        "Member": _obj(member_props, _MEMBER_REQUIRED,
                       description="A member of a root, live or exited and still kept."),
        "RecentChange": _obj({"event": {"type": "string", "enum": ["added", "removed"]},
                              **member_props}, ("event", *_MEMBER_REQUIRED),
                             description="A membership change: the member as it was."),
        "Root": _obj(_root_props(), _ROOT_REQUIRED, description="A root with its counts."),
        "RootList": _obj({"roots": {"type": "array", "items": _ref("Root")}}, ["roots"]),
        "RootDetail": _obj(detail, (*_ROOT_REQUIRED, "members", "recent", "tombstones",
                                    "events"),
                           description="A root, its members, recent changes, tombstones and "
                                       "events."),
        "TreeNode": _obj({**member_props,
                          "children": {"type": "array", "items": _ref("TreeNode"),
                                       "description": "Members it forked."}},
                         (*_MEMBER_REQUIRED, "children"),
                         description="A member with the members it forked (by lineage: an "
                                     "exited wrapper still holds its orphans)."),
        "Tree": _obj({"root": _ref("RootName"), "seq": detail["seq"], "up": _BOOL,
                      "truncated": detail["truncated"],
                      "nodes": {"type": "array", "items": _ref("TreeNode"),
                                "description": "Members whose fork parent is not a member."}},
                     ["root", "seq", "up", "truncated", "nodes"]),
        "Ancestor": _obj({"pid": _COUNT, "start_ticks": _COUNT, "comm": _nullable(_STR),
                          "user": _STR, "exited": _BOOL,
                          "in_root": {"type": "boolean",
                                      "description": "A member of the root (else: above "
                                                     "its instance, as it was when the "
                                                     "instance joined)."}},
                         ["pid", "start_ticks", "comm", "user", "exited", "in_root"]),
        "Ancestors": _obj({"root": _ref("RootName"), "pid": _COUNT,
                           "ancestors": {"type": "array", "items": _ref("Ancestor"),
                                         "description": "Nearest first, up to PID 1."},
                           "truncated": _BOOL},
                          ["root", "pid", "ancestors", "truncated"]),
        "EventAncestor": _obj({"pid": _COUNT, "start_ticks": _COUNT,
                               "comm": _nullable(_STR), "uid": _nullable(_COUNT),
                               "exited": _BOOL},
                              ["pid", "start_ticks", "comm", "uid", "exited"]),
        "Event": _event_schema(),
        "ResetFrame": _obj({"kind": {"const": "reset"}, "root": _ref("RootName"),
                            "lost": {"type": "integer", "minimum": 0,
                                     "description": "Events known lost (0 with restarted: "
                                                    "unknown)."},
                            "seq": {"type": "integer", "minimum": 0,
                                    "description": "The stream goes on after this seq."},
                            "ts": _NUM,
                            "restarted": {"const": True,
                                          "description": "The cursor was from an earlier "
                                                         "change log of the root (the "
                                                         "exporter or the root restarted)."},
                            "reason": _STR},
                           ["kind", "root", "lost", "seq", "ts", "reason"],
                           description="`lost` events of the root fell off its change log "
                                       "before they could be sent, or (restarted) the cursor "
                                       "belongs to an earlier log: refetch "
                                       "/api/v1/roots/{name}."),
        "ErrorFrame": _obj({"kind": {"const": "error"},
                            "reason": {"type": "string", "enum": list(ERROR_REASONS)},
                            "message": _STR},
                           ["kind", "reason", "message"],
                           description="The last frame before the server ends a stream: the "
                                       "client did not keep up (slow), or the daemon is "
                                       "stopping (shutdown)."),
        "StreamData": {"oneOf": [_ref("Event"), _ref("ResetFrame"), _ref("ErrorFrame")],
                       "description": "The JSON of a frame's `data:` line (one line)."},
        "StreamFrame": _obj({"id": {"type": "string", "description": "The stream's cursor "
                                    "after this frame (absent on error frames; alone, "
                                    "without data, after events a kinds filter left out)."},
                             "event": {"type": "string",
                                       "enum": [*STREAM_KINDS, "reset", "error"],
                                       "description": "The data's `kind`."},
                             "data": {"type": "string",
                                      "contentMediaType": "application/json",
                                      "contentSchema": _ref("StreamData")},
                             "retry": {"type": "integer", "minimum": 0}},
                            description="One Server-Sent-Events frame (the item schema of "
                                        "the text/event-stream response)."),
        "Cursor": {"type": "string",
                   "pattern": r"^(\d+|[^,]+:\d+(@[0-9A-Za-z]+)?(,[^,]+:\d+(@[0-9A-Za-z]+)?)*)$",
                   "description": "Per root of the stream, the seq of the last event of it "
                                  "the client has seen and the epoch of its change log: "
                                  "NAME:SEQ@EPOCH tokens joined by `,` (split each on its "
                                  "last `:`), e.g. `web:41@9f2c1a,db:7@03be77`; the epoch "
                                  "may be left out (NAME:SEQ, as built from a document's "
                                  "seq); a bare SEQ when the stream has exactly one root. A "
                                  "root missing from a cursor starts from its first event "
                                  "held."},
    }


# -- paths -----------------------------------------------------------------------------

def _json(schema: Schema) -> Schema:
    return {"application/json": {"schema": schema}}


def _text(description: str) -> Schema:
    return {"description": description,
            "content": {"text/plain; charset=utf-8": {"schema": _STR}}}


def _responses() -> dict[str, Schema]:
    return {
        "Unauthorized": {
            "description": "Basic auth is configured (web.config.file) and the request has "
                           "no valid credentials.",
            "headers": {"WWW-Authenticate": {"required": True, "schema": _STR}},
            "content": {"text/plain; charset=utf-8": {"schema": _STR}}},
        "TooManyLogins": {
            "description": "Basic auth is configured and more password checks than a few "
                           "are already waiting: a login not already cached is refused at "
                           "once rather than queued (retry after Retry-After seconds).",
            "headers": {"Retry-After": {"required": True, "schema": _COUNT}},
            "content": {"text/plain; charset=utf-8": {"schema": _STR}}},
        "NotReady": _text("The daemon is still seeding from /proc."),
        "BadRequest": {"description": "A query parameter is missing or malformed.",
                       "content": _json(_ref("Error"))},
        "NotFound": {"description": "No such root (`no root 'NAME'`), or no such member.",
                     "content": _json(_ref("Error"))},
        "WriteBadRequest": {"description": "A key, value or parameter of the request is "
                                           "wrong; `key` names it.",
                            "content": _json(_ref("WriteError"))},
        "Forbidden": {"description": "The write API is off, or this client may not write "
                                     "(a user not in api.write.users, a socket client whose "
                                     "uid is not root or in api.write.uids).",
                      "content": _json(_ref("WriteError"))},
        "WriteNotFound": {"description": "No such runtime root, or no live member with that "
                                         "identity.",
                          "content": _json(_ref("WriteError"))},
        "Conflict": {"description": "The name belongs to a root of config.yaml, or to a "
                                    "different runtime root; or api.write.max_runtime_roots "
                                    "is reached.",
                     "content": _json(_ref("WriteError"))},
    }


def _r(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _param(name: str, where: str, schema: Schema, description: str, *,
           required: bool = False, **extra: Any) -> Schema:
    doc: Schema = {"name": name, "in": where, "description": description,
                   "required": required, "schema": schema}
    doc.update(extra)
    return doc


def _op(op_id: str, tag: str, summary: str, ok: Schema, *, description: str | None = None,
        parameters: list[Schema] | None = None, errors: tuple[str, ...] = (),
        public: bool = False, more: dict[str, Schema] | None = None,
        method: str = "get") -> Schema:
    responses: dict[str, Schema] = {"200": ok} if ok else {}
    for code, name in (("400", "BadRequest"), ("404", "NotFound"), ("503", "NotReady")):
        if name in errors:
            responses[code] = _r(name)
    responses.update(more or {})
    if not public:
        responses["401"] = _r("Unauthorized")
        responses["429"] = _r("TooManyLogins")
    op: Schema = {"operationId": op_id, "tags": [tag], "summary": summary}
    if description:
        op["description"] = description
    if parameters:
        op["parameters"] = parameters
    op["responses"] = dict(sorted(responses.items()))
    if public:
        op["security"] = []
    return {method: op}


_STREAM_DESCRIPTION = """\
Server-Sent Events: every event of the chosen roots, in order per root, as it
is written to the root's change log. The body starts with `retry: 2000`; then one
frame per event:

    id: web:42@9f2c1a
    event: exited
    data: {"kind":"exited","root":"web","seq":42,...}

`id` is the stream's cursor after the frame; `event` is the event's kind; `data` is
one line of JSON (`StreamData`: an `Event` as `/api/v1/roots/{name}` lists them, a
`reset`, or a last `error` frame). A `reset` frame (sent whatever `kinds` says) means
`lost` events of a root fell off its change log, at connect or because the client
was too slow, or (`restarted`) that the cursor is from an earlier change log of the
root: refetch the root's state; the stream goes on after its `seq`. An
`error` frame is the last before the server closes the stream (`slow`: more unsent
than the client's bound; `shutdown`). A single-root stream ends after its
`root_removed` event. A comment line `: keepalive` is sent after 15 s of silence.

Without a cursor (no `Last-Event-ID`, no `since`) the stream starts now. To fetch
state and then stream without a gap: `GET /api/v1/roots/NAME` carries `seq`; then
stream with `since=NAME:SEQ`. The response has no length: it ends when either side
closes. Beyond `web.max_streams` open streams: 503 with a JSON error."""


def _killed() -> Schema:
    return {"description": "What became of each process.", "content": _json(_ref("KillReport"))}


def _write_errors() -> dict[str, Schema]:
    return {"400": _r("WriteBadRequest"), "403": _r("Forbidden"), "404": _r("WriteNotFound"),
            "409": _r("Conflict"), "503": _r("NotReady")}


_GRACE = ("Seconds between SIGTERM and SIGKILL (0-600; default api.write."
          "kill_grace_seconds); 0: SIGKILL at once.")
_KILL_DESCRIPTION = """\
SIGTERM to every live member of the root (orphans included) and to any that
appears meanwhile; after the grace, SIGKILL to what is left (a `cgroup` root: its cgroup's
`cgroup.kill`, which no fork escapes). Every signal goes through a pidfd checked against
the member's identity: a stranger that got a member's pid is never signalled, nor is a
process outside the root, PID 1 or the exporter. A socket client that is not root
signals only its own processes. Roots of config.yaml are not killed through the API
(409)."""


def _writes() -> dict[str, Schema]:
    name_p = _param("name", "path", _ref("RootName"), "The root's name.", required=True)
    grace_p = _param("grace_seconds", "query", {"type": "number", "minimum": 0,
                                                "maximum": 600}, _GRACE)
    put = _op("ensureRoot", "write", "Add a runtime root, or find it there unchanged",
              {"description": "An identical root was already there: unchanged.",
               "content": _json(_ref("RootDetail"))},
              description="The body holds the keys of a root of config.yaml, validated the "
                          "same way; `name` may be left out (the path names it). Members "
                          "already present, orphans included, are in the answer.",
              parameters=[name_p],
              more={"201": {"description": "Created: the root with its members.",
                            "content": _json(_ref("RootDetail"))},
                    **_write_errors(),
                    "413": {"description": "The body is over 64 KiB.",
                            "content": _json(_ref("WriteError"))}},
              method="put")
    put["put"]["requestBody"] = {"required": True, "content": _json(_ref("RootSpec"))}
    delete = _op("removeRoot", "write", "Stop tracking a runtime root (kill=true: end its "
                 "tree first)",
                 {"description": "Removed.", "content": _json(_ref("Removed"))},
                 parameters=[name_p,
                             _param("kill", "query", {"type": "boolean"},
                                    "First end the root's whole tree (see killRoot)."),
                             grace_p],
                 more=_write_errors(), method="delete")
    return {**put, **delete}


def _root_spec() -> Schema:
    """A root's keys as config.yaml has them (the write API's request body)."""
    kinds = list(SELECT_KINDS)
    props: dict[str, Schema] = {
        "name": _ref("RootName"),
        "select": {"type": "string", "enum": kinds},
        "match": {"type": ["string", "integer"]},
        "include_root": _BOOL,
        "max_depth": {"type": ["integer", "null"], "minimum": 0},
        "max_members": {"type": "integer", "minimum": 1},
        "capture_cmdline": _BOOL,
        "cmdline_max_chars": {"type": "integer", "minimum": 1},
        "tombstone_ttl_seconds": {"type": "number", "minimum": 0},
        "max_tombstones": {"type": "integer", "minimum": 0},
        "zombie_grace_seconds": {"type": "number", "minimum": 0},
        "change_log_size": {"type": "integer", "minimum": 10},
        "change_log_max_bytes": {"type": "integer", "minimum": 65536},
        "actions": _obj({"enabled": _BOOL, "dry_run": _BOOL,
                         "term_grace_seconds": {"type": "number", "minimum": 0},
                         "signal_zombie_parents": _BOOL}, []),
    }
    return _obj(props, ["select", "match"],
                description="A root's keys, as in config.yaml's roots (README, Roots).")


def _paths() -> dict[str, Schema]:
    root_q = _param("root", "query", _ref("RootName"), "The root's name.", required=True)
    name_p = _param("name", "path", _ref("RootName"), "The root's name.", required=True)
    grace_p = _param("grace_seconds", "query", {"type": "number", "minimum": 0,
                                                "maximum": 600}, _GRACE)
    assets = sorted(ui.ASSETS)
    asset_types = dict.fromkeys(ui.ASSETS.values())
    return {
        "/": _op("page", "page", "The tree page (HTML)", {
            "description": "The live tree page, with a table of the roots for clients "
                           "without scripts.",
            "content": {"text/html; charset=utf-8": {"schema": _STR}}}),
        "/ui/{asset}": _op(
            "pageAsset", "page", "The tree page's script, style and icon",
            {"description": "The asset.",
             "headers": {"Cache-Control": {"required": True, "schema": {"const": "no-cache"}}},
             "content": {t: {"schema": _STR} for t in asset_types}},
            parameters=[_param("asset", "path", {"type": "string", "enum": assets},
                               "The asset's file name.", required=True)],
            more={"404": _text("No such asset.")}),
        "/metrics": _op("metrics", "metrics", "Prometheus metrics", {
            "description": "The Prometheus text format, or OpenMetrics when `Accept` asks "
                           "for application/openmetrics-text; gzip when `Accept-Encoding` "
                           "allows it.",
            # the parameters (version, escaping) follow what Accept asks for
            "content": {"text/plain": {"schema": _STR},
                        "application/openmetrics-text": {"schema": _STR}}}),
        "/-/healthy": _op("healthy", "health", "Liveness: 200 while the process serves",
                          _text("`OK`"), public=True),
        "/-/ready": _op("ready", "health",
                        "Readiness: 200 once the tree is seeded and the roots attached",
                        _text("`OK`"), public=True, errors=("NotReady",)),
        "/api/v1/roots": _op("listRoots", "roots", "Every root with its counts", {
            "description": "The roots.", "content": _json(_ref("RootList"))},
            errors=("NotReady",)),
        "/api/v1/roots/{name}": {**_op(
            "getRoot", "roots", "A root with its members, changes, tombstones and events",
            {"description": "The root.", "content": _json(_ref("RootDetail"))},
            parameters=[name_p], errors=("NotFound", "NotReady")), **_writes()},
        "/api/v1/roots/{name}/kill": _op(
            "killRoot", "write", "End a runtime root's whole tree", _killed(),
            description=_KILL_DESCRIPTION, parameters=[name_p, grace_p],
            more=_write_errors(), method="post"),
        "/api/v1/roots/{name}/processes/{pid}/kill": _op(
            "killMember", "write", "End one member of a runtime root, by identity", _killed(),
            description="SIGTERM, then SIGKILL after the grace, to the live member with this "
                        "pid and start time (as the API lists it); 404 when no live member "
                        "has that identity (it exited, or its pid is another process's now).",
            parameters=[name_p,
                        _param("pid", "path", _COUNT, "The member's pid.", required=True),
                        _param("start_ticks", "query", _COUNT, "Its start time (clock "
                               "ticks since boot): with the pid, its identity.",
                               required=True), grace_p],
            more=_write_errors(), method="post"),
        "/api/v1/tree": _op(
            "getTree", "roots", "A root's members and tombstones nested by lineage",
            {"description": "The tree.", "content": _json(_ref("Tree"))},
            parameters=[root_q], errors=("BadRequest", "NotFound", "NotReady")),
        "/api/v1/ancestors": _op(
            "getAncestors", "roots", "A member's lineage ancestors, nearest first",
            {"description": "Inside the root from its members; above its instance as they "
                            "were when the instance joined; at most 256.",
             "content": _json(_ref("Ancestors"))},
            parameters=[root_q,
                        _param("pid", "query", _COUNT, "A live (or unreaped) member's pid.",
                               required=True),
                        _param("start_ticks", "query", _COUNT,
                               "Its start time, to tell it from an older holder of the "
                               "pid.")],
            errors=("BadRequest", "NotFound", "NotReady")),
        "/api/v1/events": _op(
            "streamEvents", "stream", "The roots' events as Server-Sent Events",
            {"description": "The stream (see the operation's description).",
             "headers": {"Cache-Control": {"required": True, "schema": {"const": "no-cache"}},
                         "X-Accel-Buffering": {"required": True, "schema": {"const": "no"}}},
             "content": {"text/event-stream; charset=utf-8": {
                 "schema": {"type": "string"},
                 "x-itemSchema": _ref("StreamFrame")}}},
            description=_STREAM_DESCRIPTION,
            parameters=[
                _param("root", "query", {"type": "array", "items": _ref("RootName")},
                       "Roots to follow (repeatable); none: every root, including roots "
                       "added later (from their first event).",
                       style="form", explode=True),
                _param("kinds", "query",
                       {"type": "array", "items": {"type": "string",
                                                   "enum": list(STREAM_KINDS)}},
                       "Comma-separated event kinds to send (reset frames are always "
                       "sent). Unknown kind: 400.", style="form", explode=False),
                _param("since", "query", _ref("Cursor"),
                       "Resume after this cursor (Last-Event-ID takes precedence)."),
                _param("Last-Event-ID", "header", _ref("Cursor"),
                       "The `id` of the last frame seen (what EventSource sends when it "
                       "reconnects)."),
            ],
            errors=("BadRequest", "NotFound"),
            more={"503": {"description": "Beyond web.max_streams open streams (JSON, with "
                                         "Retry-After), or still seeding from /proc (text).",
                          "headers": {"Retry-After": {"schema": _COUNT}},
                          "content": {**_json(_ref("Error")),
                                      "text/plain; charset=utf-8": {"schema": _STR}}}}),
        "/api/v1/openapi.json": _op(
            "openapi", "meta", "This document", {
                "description": "The OpenAPI 3.1 description of this API.",
                "content": _json({"type": "object"})}),
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the daemon's HTTP API (a new dict on every call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "proctree-exporter",
            "version": __version__,
            "summary": "Process trees of a Linux host: roots, members, events, metrics.",
            "description": (
                "Every GET path answers HEAD too (the head of GET, no body). JSON, HTML, "
                "CSS, script and SVG bodies of 1 KiB or more are gzipped when "
                "Accept-Encoding allows it. Methods a "
                "path does not list get 405, unknown paths 404 (text). The write "
                "operations (tag write: PUT, DELETE, POST) need api.write.enabled and a "
                "writer: a basic-auth user in api.write.users, or a client of the Unix "
                "socket api.write.socket whose uid is root or in api.write.uids (the "
                "socket serves every path, without basic auth). With basic auth configured in "
                "the web config file (web.config.file, exporter-toolkit format) every "
                "path but /-/healthy and /-/ready needs credentials; TLS, when configured, "
                "applies to all. JSON objects may gain fields in later versions: ignore "
                "the ones you do not know."),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "roots", "description": "The JSON API: roots, members, lineage."},
            {"name": "stream", "description": "Events as they happen (Server-Sent Events)."},
            {"name": "write", "description": "Runtime roots: add, remove, kill (off unless "
                                             "api.write.enabled)."},
            {"name": "metrics", "description": "Prometheus."},
            {"name": "health", "description": "Liveness and readiness (never need "
                                              "credentials)."},
            {"name": "page", "description": "The tree page for people."},
            {"name": "meta", "description": "This description."},
        ],
        # credentials only where web.config.file sets basic_auth_users
        "security": [{}, {"basicAuth": []}],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "securitySchemes": {"basicAuth": {
                "type": "http", "scheme": "basic",
                "description": "basic_auth_users of the web config file (bcrypt hashes), "
                               "when set."}},
        },
    }


@functools.cache
def body() -> bytes:
    """:func:`document` as JSON, encoded once."""
    return (json.dumps(document(), separators=(",", ":")) + "\n").encode()
