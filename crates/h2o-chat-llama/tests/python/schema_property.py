"""Every structured answer validates against its schema: schemas drawn at random (objects,
nested objects, arrays with min/max items, enums, integers and numbers with bounds, strings,
required and optional keys, additionalProperties false) with prompts, sent as OpenAI's
`response_format`, each answer validated with the `jsonschema` package.

Usage: python3 schema_property.py BASE_URL COUNT SEED. Prints a summary as one JSON line last.
"""
import json
import random
import sys
import urllib.request

import jsonschema

base, count, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
WORDS = ["name", "city", "colour", "size", "price", "count", "tags", "owner", "kind", "score", "notes", "items"]


def draw(depth):
    """A schema of bounded answers: strings and arrays have a maximum, numbers a range."""
    kinds = ["string", "integer", "number", "boolean", "enum"]
    if depth < 2:
        kinds += ["object", "array"]
    kind = rng.choice(kinds)
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(1, 24)}
    if kind == "integer":
        low = rng.randint(-100, 100)
        return {"type": "integer", "minimum": low, "maximum": low + rng.randint(0, 1000)}
    if kind == "number":
        low = rng.uniform(-50, 50)
        return {"type": "number", "minimum": round(low, 2), "maximum": round(low + rng.uniform(1, 100), 2)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "small", "large", 1, 2, True, None], rng.randint(1, 4))}
    if kind == "array":
        low = rng.randint(0, 2)
        return {"type": "array", "items": draw(depth + 1), "minItems": low, "maxItems": low + rng.randint(0, 2)}
    keys = rng.sample(WORDS, rng.randint(1, 4))
    return {
        "type": "object",
        "properties": {k: draw(depth + 1) for k in keys},
        "required": [k for k in keys if rng.random() < 0.6],
        "additionalProperties": False,
    }


def ask(schema, topic):
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Describe {topic} as JSON."}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}},
        "temperature": rng.choice([0, 0.8]),
        "seed": rng.randint(0, 1000),
        "max_tokens": 400,
    }
    request = urllib.request.Request(f"{base}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)["choices"][0]


checked = []
for i in range(count):
    schema = {"type": "object", "properties": {k: draw(1) for k in rng.sample(WORDS, rng.randint(1, 4))}, "additionalProperties": False}
    schema["required"] = [k for k in schema["properties"] if rng.random() < 0.6]
    topic = rng.choice(["a cat", "a city", "a shop", "a game", "the weather", "a book"])
    choice = ask(schema, topic)
    assert choice["finish_reason"] == "stop", (schema, choice)
    answer = json.loads(choice["message"]["content"])
    jsonschema.validate(answer, schema)
    checked.append({"schema": schema, "answer": answer})

print(json.dumps({"checked": len(checked), "last": checked[-1] if checked else None}))
