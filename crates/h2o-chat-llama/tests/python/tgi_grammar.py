"""TGI's own `text-generation` Python client with a `grammar`, against the real model: a JSON
schema (the answer validates) and a regular expression (the answer matches in full), not
streamed and streamed, and `top_n_tokens`.

Usage: python3 tgi_grammar.py BASE_URL. Prints what it saw as one JSON line last.
"""
import json
import re
import sys

import jsonschema
from text_generation import Client
from text_generation.types import Grammar, GrammarType

client = Client(sys.argv[1], timeout=180)
prompt = "<|im_start|>user\nDescribe a cat as JSON.<|im_end|>\n<|im_start|>assistant\n"
schema = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 20},
    "age": {"type": "integer", "minimum": 0, "maximum": 30},
    "colours": {"type": "array", "items": {"enum": ["black", "white", "ginger", "grey"]}, "minItems": 1, "maxItems": 3}},
    "required": ["name", "age", "colours"], "additionalProperties": False}

done = client.generate(prompt, max_new_tokens=80, grammar=Grammar(type=GrammarType.Json, value=schema))
answer = json.loads(done.generated_text)
jsonschema.validate(answer, schema)
assert done.details.finish_reason == "eos_token", done.details

streamed = "".join(r.token.text for r in client.generate_stream(
    prompt, max_new_tokens=80, grammar=Grammar(type=GrammarType.Json, value=json.dumps(schema))) if not r.token.special)
assert streamed == done.generated_text, (streamed, done.generated_text)

pattern = r"[A-Z][a-z]{2,9}, [0-9]{4}"
dated = client.generate("<|im_start|>user\nA city and a year?<|im_end|>\n<|im_start|>assistant\n",
                        max_new_tokens=20, grammar=Grammar(type=GrammarType.Regex, value=pattern))
assert re.fullmatch(pattern, dated.generated_text), dated.generated_text

top = client.generate("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
                      max_new_tokens=4, top_n_tokens=3)
assert all(len(t) == 3 for t in top.details.top_tokens), top.details
for chosen, alternatives in zip(top.details.tokens, top.details.top_tokens):
    assert chosen.id == alternatives[0].id, (chosen, alternatives)

print(json.dumps({
    "json": answer,
    "regex": dated.generated_text,
    "top_tokens": [[t.text for t in alts] for alts in top.details.top_tokens],
    "first_top": [[t.id, t.logprob] for t in top.details.top_tokens[0]],
}))
