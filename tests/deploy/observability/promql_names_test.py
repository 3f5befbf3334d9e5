#!/usr/bin/python3
"""Unit tests of promql_names (the metric-name extraction the dashboard check
relies on) and of dashboard_metrics_test's name check against an exposition,
and structural checks of deploy/grafana/asymcache.json that need
no running process: unique panel ids, non-overlapping grid positions, every
query on the $datasource variable and filtered by $job and $instance, and the
variables it uses defined.

Run: promql_names_test.py [-v]   (ctest: deploy.observability.promql_names)
"""

import json
import os
import re
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dashboard_metrics_test  # noqa: E402
import promql_names  # noqa: E402

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "asymcache.json")


def names(expr):
    return [s.name for s in promql_names.selectors(expr)]


class SelectorsTest(unittest.TestCase):
    def test_plain_and_labeled_selectors(self):
        self.assertEqual(names('up'), ["up"])
        selectors = promql_names.selectors('asymcache_blocks{state="free", job=~"a|b"}')
        self.assertEqual(len(selectors), 1)
        self.assertEqual(selectors[0].name, "asymcache_blocks")
        self.assertEqual(selectors[0].matchers, [("state", "=", "free"), ("job", "=~", "a|b")])

    def test_functions_aggregations_and_grouping_are_not_names(self):
        expr = ('histogram_quantile(0.99, sum by (le, instance) '
                '(rate(asymcache_worker_ttft_seconds_bucket{job="w"}[5m])))')
        self.assertEqual(names(expr), ["asymcache_worker_ttft_seconds_bucket"])
        expr = 'sum(rate(a_total[1m])) without (instance, le) / on (job) group_left (kind) b'
        self.assertEqual(names(expr), ["a_total", "b"])
        expr = 'x and on (job) y or ignoring (le) z unless w'
        self.assertEqual(names(expr), ["x", "y", "z", "w"])
        self.assertEqual(names('a > bool 3 and b == inf'), ["a", "b"])
        self.assertEqual(names('count_values("version", build_info)'), ["build_info"])

    def test_label_names_inside_grouping_clauses_are_skipped(self):
        # "le", "kind" here are labels, not metrics.
        self.assertEqual(names('sum by (le) (x) + sum(y) by (kind)'), ["x", "y"])
        self.assertEqual(names('a / on (instance) group_left () b'), ["a", "b"])
        self.assertEqual(names('a * on (instance) group_right c'), ["a", "c"])

    def test_offsets_durations_numbers_and_subqueries(self):
        self.assertEqual(names('rate(a[5m] offset 1h) > 1e3 * 0.5 + 0x1F'), ["a"])
        self.assertEqual(names('max_over_time(rate(a[1m])[30m:1m])'), ["a"])
        self.assertEqual(names('a offset 1h30m'), ["a"])

    def test_strings_and_comments_hide_their_contents(self):
        expr = ('label_replace(up, "dst", "rate(fake_metric)", "src", "(.*)") '
                '# not_a_metric here\n + other')
        self.assertEqual(names(expr), ["up", "other"])
        self.assertEqual(names("a{l='it\\'s'}"), ["a"])

    def test_recording_rule_names_with_colons(self):
        self.assertEqual(names('job:asymcache_hit_ratio:rate15m < 0.5 * (job:x:rate15m offset 1h)'),
                         ["job:asymcache_hit_ratio:rate15m", "job:x:rate15m"])

    def test_name_matcher_selector(self):
        selectors = promql_names.selectors('{__name__="a_total", job="j"}')
        self.assertEqual(selectors[0].name, "a_total")
        self.assertIsNone(promql_names.selectors('{__name__=~"a.*"}')[0].name)

    def test_grafana_variables(self):
        self.assertEqual(names('rate(a{job=~"$job"}[$__rate_interval]) * ${factor}'), ["a"])
        expr = 'rate(a{job=~"$job",instance=~"${instance}"}[$__rate_interval])'
        self.assertEqual(promql_names.substitute_grafana_variables(expr),
                         'rate(a{job=~".*",instance=~".*"}[1m])')
        self.assertEqual(promql_names.grafana_variable_promql('label_values(up{job=~"$job"}, instance)'),
                         'up{job=~"$job"}')
        self.assertEqual(promql_names.grafana_variable_promql("label_values(job)"), "up")
        with self.assertRaises(promql_names.PromQLSyntaxError):
            promql_names.grafana_variable_promql("metrics(asymcache_.*)")

    def test_bad_input_is_an_error(self):
        with self.assertRaises(promql_names.PromQLSyntaxError):
            promql_names.tokens('a ? b')
        with self.assertRaises(promql_names.PromQLSyntaxError):
            promql_names.selectors('a{state}')
        with self.assertRaises(promql_names.PromQLSyntaxError):
            promql_names.selectors('a{state="x"')

    def test_dashboard_expressions_walks_rows_and_variables(self):
        dashboard = {
            "panels": [
                {"title": "p", "targets": [{"refId": "A", "expr": "a"}]},
                {"type": "row", "title": "r", "panels": [
                    {"title": "q", "targets": [{"refId": "B", "expr": "b"}, {"refId": "C"}]}]},
            ],
            "templating": {"list": [
                {"name": "job", "type": "query", "query": {"query": "label_values(c, job)"}},
                {"name": "ds", "type": "datasource", "query": "prometheus"},
            ]},
        }
        found = promql_names.dashboard_expressions(dashboard)
        self.assertEqual([expr for _, expr in found], ["a", "b", "c"])
        self.assertIn("row 'r'", found[1][0])


EXPOSITION = """\
# HELP asymcache_evictions_total KV blocks evicted.
# TYPE asymcache_evictions_total counter
asymcache_evictions_total{policy="asym",reason="capacity"} 3
# TYPE asymcache_worker_ttft_seconds histogram
asymcache_worker_ttft_seconds_count 2
asymcache_worker_ttft_seconds_sum 0.5
asymcache_worker_ttft_seconds_bucket{le="0.1"} 1
asymcache_worker_ttft_seconds_bucket{le="+Inf"} 2
# TYPE odd_bucket counter
odd_bucket 4
"""


class NameCheckTest(unittest.TestCase):
    """The check the live test applies, on a fixed exposition: it can fail."""

    def problems(self, expr, recorded=()):
        exposition = dashboard_metrics_test.Exposition()
        exposition.add("test", EXPOSITION)
        _, problems = dashboard_metrics_test.check_names([("expr", expr)], exposition, set(recorded))
        return problems

    def test_exposed_names_and_labels_pass(self):
        self.assertEqual(self.problems(
            'sum by (reason) (rate(asymcache_evictions_total{job=~"$job",reason="capacity"}[5m]))'), [])
        self.assertEqual(self.problems(
            'histogram_quantile(0.9, sum by (le) (rate(asymcache_worker_ttft_seconds_bucket[1m])))'
            ' + asymcache_worker_ttft_seconds_sum / asymcache_worker_ttft_seconds_count'), [])

    def test_synthetic_and_recorded_names_pass(self):
        self.assertEqual(self.problems('up{job="x"} == 0 and on (job) job:ratio:rate15m < 1',
                                       recorded={"job:ratio:rate15m"}), [])

    def test_each_broken_reference_fails(self):
        cases = [
            ("rate(asymcache_evicted_total[5m])", "asymcache_evicted_total is not exposed"),
            ("asymcache_worker_ttft_seconds > 1", "is a histogram"),            # bare histogram name
            ("odd_bucket", "odd is not a histogram"),                           # _bucket of a counter
            ('asymcache_evictions_total{tier="gpu"}', "has no label 'tier'"),
            ('{__name__=~"asymcache_.*"}', "without a metric name"),
        ]
        for expr, why in cases:
            with self.subTest(expr=expr):
                [problem] = self.problems(expr)
                self.assertIn(why, problem)


class DashboardStructureTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        with open(DASHBOARD) as f:
            cls.dashboard = json.load(f)
        cls.panels = []

        def walk(panels):
            for panel in panels:
                cls.panels.append(panel)
                walk(panel.get("panels", []))

        walk(cls.dashboard["panels"])

    def test_identity(self):
        self.assertEqual(self.dashboard["uid"], "asymcache")
        self.assertTrue(self.dashboard["title"])
        self.assertIsInstance(self.dashboard["schemaVersion"], int)

    def test_panel_ids_unique(self):
        ids = [p["id"] for p in self.panels]
        self.assertEqual(len(ids), len(set(ids)), f"duplicate panel ids: {sorted(ids)}")

    def test_grid_positions_do_not_overlap(self):
        cells = {}
        for panel in self.panels:
            g = panel["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, f"panel '{panel['title']}' wider than the grid")
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    other = cells.setdefault((x, y), panel["title"])
                    self.assertEqual(other, panel["title"],
                                     f"panels '{other}' and '{panel['title']}' overlap at ({x}, {y})")

    def test_every_query_uses_the_variables(self):
        variables = {v["name"] for v in self.dashboard["templating"]["list"]}
        self.assertTrue({"datasource", "job", "instance"} <= variables, variables)
        for panel in self.panels:
            if panel.get("type") == "row":
                continue
            self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
            self.assertTrue(panel.get("description"), f"panel '{panel['title']}' has no description")
            self.assertTrue(panel["targets"], f"panel '{panel['title']}' has no query")
            for target in panel["targets"]:
                self.assertEqual(target["datasource"]["uid"], "${datasource}", panel["title"])
                expr = target["expr"]
                for used in re.findall(r"\$\{?(\w+)", expr):
                    self.assertTrue(used.startswith("__") or used in variables,
                                    f"panel '{panel['title']}' uses undefined ${used}")
                # Every metric a query reads is filtered by the job and instance selection.
                for selector in promql_names.selectors(expr):
                    for label in ("job", "instance"):
                        self.assertIn((label, "=~", f"${label}"), selector.matchers,
                                      f"panel '{panel['title']}': {selector.name} not filtered by "
                                      f"{label}=~\"${label}\" in {expr}")


if __name__ == "__main__":
    unittest.main()
