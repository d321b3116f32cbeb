"""Parses h2o-chat's /metrics with Prometheus' own text parser (`pip install prometheus_client`).

Usage: python3 metrics_parse.py BASE_URL. Exits non-zero with a message on any mismatch; prints
what it parsed as one JSON line last, for the Rust test to check too.
"""
import json
import sys
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

url = sys.argv[1]
text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode("utf-8")
families = {family.name: family for family in text_string_to_metric_families(text)}

expected = {
    "h2o_chat_requests": "counter",
    "h2o_chat_time_to_first_token_seconds": "histogram",
    "h2o_chat_inter_token_latency_seconds": "histogram",
    "h2o_chat_queue_depth": "gauge",
    "h2o_chat_slots": "gauge",
    "h2o_chat_slots_busy": "gauge",
    "h2o_chat_prompt_tokens_evaluated": "counter",
    "h2o_chat_prompt_tokens_cached": "counter",
    "h2o_chat_generated_tokens": "counter",
    "h2o_chat_connections": "gauge",
}
for name, kind in expected.items():
    assert name in families, f"{name} missing; have {sorted(families)}"
    assert families[name].type == kind, (name, families[name].type)

requests = [s for s in families["h2o_chat_requests"].samples if s.name == "h2o_chat_requests_total"]
routes = {s.labels["route"] for s in requests}
assert "POST /generate_stream" in routes, routes
ttft = [s for s in families["h2o_chat_time_to_first_token_seconds"].samples if s.name.endswith("_count")]
assert ttft and ttft[0].value >= 1, ttft
slots = families["h2o_chat_slots"].samples[0]
assert slots.labels["model"] and slots.value >= 1, slots
generated = families["h2o_chat_generated_tokens"].samples[0]
assert generated.value >= 4, generated

print(json.dumps({
    "families": {name: family.type for name, family in families.items()},
    "routes": sorted(routes),
    "slots": slots.value,
    "generated": generated.value,
}))
