"""TGI's own Python client (`pip install text-generation`) against h2o-chat-server.

Usage: python3 tgi_client.py BASE_URL. Exits non-zero with a message on any mismatch; prints
what it saw as one JSON line last, for the Rust test to check too.
"""
import json
import sys

from text_generation import Client
from text_generation.errors import ValidationError

url = sys.argv[1]
client = Client(url, timeout=120)
prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"

# /generate: the whole answer with details (the client always asks for them).
response = client.generate(prompt, max_new_tokens=24)
assert "Paris" in response.generated_text, response.generated_text
assert response.details.finish_reason in ("eos_token", "length"), response.details
assert response.details.generated_tokens == len(response.details.tokens), response.details

# /generate_stream: tokens, then the final event with details.
tokens = list(client.generate_stream(prompt, max_new_tokens=24))
assert tokens[-1].generated_text is not None, tokens[-1]
assert all(t.generated_text is None for t in tokens[:-1])
text = "".join(t.token.text for t in tokens if not t.token.special)
assert text == tokens[-1].generated_text, (text, tokens[-1].generated_text)
assert tokens[-1].details.generated_tokens == len(tokens)

# Seeded sampling is reproducible.
a = client.generate(prompt, max_new_tokens=16, do_sample=True, temperature=0.9, seed=11)
b = client.generate(prompt, max_new_tokens=16, do_sample=True, temperature=0.9, seed=11)
assert a.generated_text == b.generated_text and a.details.seed == 11

# A stop sequence ends the run with its text.
stopped = client.generate(prompt, max_new_tokens=24, stop_sequences=[" Paris"])
assert stopped.details.finish_reason == "stop_sequence", stopped.details
assert stopped.generated_text.endswith(" Paris"), stopped.generated_text

# decoder_input_details: the prompt's tokens, each scored given those before it.
scored = client.generate(prompt, max_new_tokens=1, decoder_input_details=True)
prefill = scored.details.prefill
assert "".join(t.text for t in prefill) == prompt, prefill
assert prefill[0].logprob is None, prefill[0]
assert all(t.logprob is not None and t.logprob <= 0 for t in prefill[1:]), prefill
assert client.generate(prompt, max_new_tokens=1).details.prefill == []

# Validation errors arrive as the client's typed exception.
try:
    client.generate(prompt, max_new_tokens=4, top_p=1.0)
except ValidationError as err:
    assert "`top_p` must be > 0.0 and < 1.0" in str(err), err
    refusal = str(err)
else:
    raise AssertionError("top_p=1.0 was accepted")

print(json.dumps({
    "generated": response.generated_text,
    "streamed": text,
    "stream_final": tokens[-1].generated_text,
    "seeded": [a.generated_text, b.generated_text],
    "stopped": [stopped.details.finish_reason, stopped.generated_text],
    "refusal": refusal,
    "prefill": len(prefill),
}))
