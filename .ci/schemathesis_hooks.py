"""Rules of the subscription document that JSON Schema cannot state, for .ci/schema-check.

The served document states every rule it can (src/api/subscriptions/input.rs); the ones
below relate two members (or a list's items), so a generated document may satisfy the schema and still break
one. The relay answers those 422, as its descriptions say; these hooks keep such documents
out of the generated cases so that every other schema-valid document must be accepted
(positive_data_acceptance). Each rule is one the descriptions name; a bulk replay's range
(`from` before `to`) is one more.
"""

import re
from datetime import datetime

import schemathesis

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
RESERVED_HEADERS = {
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "user-agent",
}


def seconds(text):
    """A duration in one of the patterns' spellings, in seconds; None when it is not one."""
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", text) if isinstance(text, str) else None
    return int(m.group(1)) * UNITS[m.group(2)] if m else None


def backoff_ok(b):
    """`max` is not below `initial` (defaults 5s and 1h)."""
    if not isinstance(b, dict) or b.get("schedule") is not None:
        return True
    initial = seconds(b.get("initial") or "5s")
    largest = seconds(b.get("max") or "1h")
    return initial is None or largest is None or largest >= initial


def circuit_ok(c):
    """`max_cool_down` is not below `cool_down` (default 30s; without `max_cool_down`, its
    default follows `cool_down`); `min_attempts` comes only with a `failure_ratio`."""
    if not isinstance(c, dict):
        return True
    if c.get("min_attempts") is not None and c.get("failure_ratio") is None:
        return False
    if c.get("max_cool_down") is None:
        return True
    cool_down = seconds(c.get("cool_down") or "30s")
    largest = seconds(c["max_cool_down"])
    return cool_down is None or largest is None or largest >= cool_down


def bound(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


def filter_ok(f):
    """A range's `from` is not after its `to`, in every condition."""
    if not isinstance(f, dict):
        return True
    for combinator in ("all", "any"):
        if isinstance(f.get(combinator), list):
            return all(filter_ok(child) for child in f[combinator])
    if "not" in f:
        return filter_ok(f["not"])
    low, high = bound(f.get("from")), bound(f.get("to"))
    return low is None or high is None or low <= high


def headers_ok(doc):
    """Not a header the relay sets, nor `authorization` beside `auth`."""
    headers = doc.get("headers")
    if not isinstance(headers, dict):
        return True
    for name in headers:
        lower = name.lower()
        if lower in RESERVED_HEADERS or lower.startswith(("webhook-", "hookrelay-")):
            return False
        if lower == "authorization" and doc.get("auth") is not None:
            return False
    return True


def statuses(entry):
    """The statuses a `success_code` or `final_statuses` entry names, as a set."""
    if isinstance(entry, bool):
        return set()
    if isinstance(entry, int):
        return {entry}
    if isinstance(entry, str) and re.fullmatch(r"[1-5]xx", entry):
        c = int(entry[0]) * 100
        return set(range(c, c + 100))
    return set()


def final_statuses_ok(doc):
    """No final status is also a success code, and none is listed twice (a status inside a
    listed class counts as listed; a class leaves 408 and 429 out)."""
    finals = doc.get("final_statuses")
    if not isinstance(finals, list):
        return True
    success = doc.get("success_code")
    if success is None:
        success = "2xx"
    ok = set()
    for entry in success if isinstance(success, list) else [success]:
        ok |= statuses(entry)
    seen = set()
    for entry in finals:
        named = statuses(entry)
        if isinstance(entry, str):
            named -= {408, 429}
        if named & ok or named & seen:
            return False
        seen |= named
    return True


def replay_range_ok(body):
    """A bulk replay's `from` is before its `to`."""
    low, high = bound(body.get("from")), bound(body.get("to"))
    return low is None or high is None or low < high


def tls_ok(body):
    """No `tls` member: its PEM text must parse and fit together (certificate and key), and
    it needs an https URL; a schema states none of that, and tests/receiver_tls.rs covers it
    with real certificates."""
    return body.get("tls") is None


def subscription_rules(context, body):
    operation = getattr(context, "operation", None)
    if operation is None or not operation.path.startswith("/v1/subscriptions"):
        return True
    if not isinstance(body, dict):
        return True
    if operation.path.endswith("/replay"):
        return replay_range_ok(body)
    return (
        backoff_ok(body.get("backoff"))
        and circuit_ok(body.get("circuit"))
        and filter_ok(body.get("filter"))
        and headers_ok(body)
        and final_statuses_ok(body)
        and tls_ok(body)
    )


@schemathesis.hook("filter_body")
def filter_body(context, body):
    """Generated bodies (the fuzzing and stateful phases)."""
    return subscription_rules(context, body)


@schemathesis.hook("filter_case")
def filter_case(context, case):
    """Whole cases, which the coverage phase filters instead of bodies."""
    return subscription_rules(context, case.body)
