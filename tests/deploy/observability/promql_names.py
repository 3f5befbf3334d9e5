"""The metric selectors a PromQL expression reads, and the expressions of the
Grafana dashboard and the Prometheus rule files.

Used by dashboard_metrics_test.py (checks every name against live /metrics
expositions) and tested by promql_names_test.py. Not a full PromQL parser:
it relies on the expression being valid (the tests run `promtool check rules`
on every expression first) and only needs to tell metric names apart from
function names, keywords, label names, strings, numbers and durations.
Grafana variables ($job, ${x}, $__rate_interval) are skipped where they stand
outside strings (ranges); inside matcher strings they stay as written.

selectors(expr) -> [Selector(name, matchers)] in order of appearance, where
matchers is a list of (label, op, value) with op one of = != =~ !~. A
selector written only as {__name__="x", ...} gets name "x"; one with no
equality __name__ matcher gets name None.
"""

import json
import re
from dataclasses import dataclass, field

# Keywords and modifiers that look like identifiers but never name a metric.
BINARY_KEYWORDS = {"and", "or", "unless", "atan2"}
GROUPING_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
OTHER_KEYWORDS = {"bool", "offset", "inf", "nan", "start", "end"}
# Aggregation operators: keywords (never metric names), followed by "(" or by
# a by/without clause.
AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile"}

# Grafana variables: ranges become a duration, anything else a match-all
# regex (they only appear inside label matcher strings in our dashboards).
GRAFANA_RANGE_VARIABLES = ("$__rate_interval", "$__interval", "$__range")
_GRAFANA_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<variable>\$\{[^}]*\}|\$\w+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+)
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<matchop>=~|!~|!=|==|<=|>=)
  | (?P<punct>[(){}\[\],=<>+\-*/%^@:])
""", re.VERBOSE)


class PromQLSyntaxError(ValueError):
    pass


@dataclass
class Selector:
    name: str | None
    matchers: list = field(default_factory=list)  # (label, op, value)


def substitute_grafana_variables(expr, range_value="1m"):
    """The expression with Grafana's $variables replaced so PromQL tools accept it."""
    for variable in GRAFANA_RANGE_VARIABLES:
        expr = expr.replace(variable, range_value)
    return _GRAFANA_VARIABLE.sub(".*", expr)


def tokens(expr):
    position = 0
    result = []
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if not match:
            raise PromQLSyntaxError(f"unexpected character {expr[position]!r} at {position} in: {expr}")
        kind = match.lastgroup
        if kind not in ("space", "comment", "variable"):
            result.append((kind, match.group(kind)))
        position = match.end()
    return result


def _unquote(literal):
    if literal[0] == "`":
        return literal[1:-1]
    return json.loads('"' + literal[1:-1].replace("\\'", "'") + '"')


def _skip_parenthesized(toks, i):
    """toks[i] is '('; returns the index after the matching ')'."""
    depth = 0
    while i < len(toks):
        if toks[i] == ("punct", "("):
            depth += 1
        elif toks[i] == ("punct", ")"):
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise PromQLSyntaxError("unbalanced parentheses")


def _matchers(toks, i):
    """toks[i] is '{'; returns (matchers, index after '}')."""
    i += 1
    found = []
    while i < len(toks) and toks[i] != ("punct", "}"):
        if toks[i] == ("punct", ","):
            i += 1
            continue
        if i + 2 >= len(toks):
            raise PromQLSyntaxError("unterminated label matchers")
        label_kind, label = toks[i]
        _, op = toks[i + 1]
        value_kind, value = toks[i + 2]
        if label_kind != "ident" or op not in ("=", "!=", "=~", "!~") or value_kind != "string":
            raise PromQLSyntaxError(f"bad label matcher near {label!r}")
        found.append((label, op, _unquote(value)))
        i += 3
    if i >= len(toks):
        raise PromQLSyntaxError("unterminated label matchers")
    return found, i + 1


def selectors(expr):
    """Every vector/matrix selector of expr, as Selector objects, in order."""
    toks = tokens(expr)
    found = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        following = toks[i + 1] if i + 1 < len(toks) else None
        if kind == "punct" and text == "[":
            # Range or subquery: durations, numbers and ':' only.
            while i < len(toks) and toks[i] != ("punct", "]"):
                i += 1
            i += 1
            continue
        if kind == "punct" and text == "{":
            matchers, i = _matchers(toks, i)
            names = [v for (label, op, v) in matchers if label == "__name__" and op == "="]
            found.append(Selector(names[0] if names else None, matchers))
            continue
        if kind != "ident":
            i += 1
            continue
        word = text.lower()
        if word in GROUPING_KEYWORDS:
            # by (a, b), on (a), group_left (b) or a bare group_left.
            i += 1
            if i < len(toks) and toks[i] == ("punct", "("):
                i = _skip_parenthesized(toks, i)
            continue
        if word in BINARY_KEYWORDS or word in OTHER_KEYWORDS or word in AGGREGATIONS:
            i += 1
            continue
        if following == ("punct", "("):
            i += 1  # a function or aggregation name
            continue
        matchers = []
        i += 1
        if i < len(toks) and toks[i] == ("punct", "{"):
            matchers, i = _matchers(toks, i)
        found.append(Selector(text, matchers))
    return found


def dashboard_expressions(dashboard):
    """(where, expr) for every PromQL query of a Grafana dashboard: panel
    targets (rows' nested panels included) and query variables."""
    found = []

    def walk(panels, prefix):
        for panel in panels:
            title = panel.get("title", "?")
            for target in panel.get("targets", []):
                if target.get("expr"):
                    found.append((f"{prefix}panel '{title}' target {target.get('refId')}", target["expr"]))
            walk(panel.get("panels", []), f"{prefix}row '{title}' / ")

    walk(dashboard.get("panels", []), "")
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        found.append((f"variable ${variable['name']}", grafana_variable_promql(query)))
    return found


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:(?P<selector>.+?)\s*,\s*)?(?P<label>\w+)\s*\)\s*$")
_QUERY_RESULT = re.compile(r"^\s*query_result\((?P<expr>.*)\)\s*$", re.S)


def grafana_variable_promql(query):
    """The PromQL inside a Grafana Prometheus variable query
    (label_values(selector, label), query_result(expr), metrics(regex))."""
    match = _LABEL_VALUES.match(query)
    if match:
        return match.group("selector") or "up"  # label_values(label) asks every series
    match = _QUERY_RESULT.match(query)
    if match:
        return match.group("expr")
    raise PromQLSyntaxError(f"unsupported Grafana variable query: {query}")

