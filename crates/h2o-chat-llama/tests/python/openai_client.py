"""The official `openai` Python package against h2o-chat-server's OpenAI routes.

Usage: python3 openai_client.py BASE_URL API_KEY. Exits non-zero on any mismatch; prints what
it saw as one JSON line last, for the Rust test to check too.
"""
import json
import sys

import openai

base, key = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)

models = [m.id for m in client.models.list()]
assert "HuggingFaceTB/SmolLM2-135M-Instruct" in models, models
assert "h2oai/h2ogpt-gm-oasst1-en-2048-falcon-40b-v1" in models, models

question = [{"role": "user", "content": "What is the capital of France?"}]

# Non-streaming, greedy.
done = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=32)
assert "Paris" in done.choices[0].message.content, done
assert done.choices[0].finish_reason in ("stop", "length"), done
assert done.usage.prompt_tokens > 0 and done.usage.completion_tokens > 0, done.usage
assert done.usage.total_tokens == done.usage.prompt_tokens + done.usage.completion_tokens

# Streaming with usage: finish_reason null until the last content chunk, then a usage chunk.
stream = client.chat.completions.create(
    model="smollm2", messages=question, temperature=0, max_tokens=32, stream=True,
    stream_options={"include_usage": True},
)
chunks = list(stream)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == done.choices[0].message.content, (text, done.choices[0].message.content)
reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
assert all(r is None for r in reasons[:-1]) and reasons[-1] in ("stop", "length"), reasons
assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == done.usage.completion_tokens

# Legacy text completion.
legacy = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=4, temperature=0)
assert legacy.choices[0].text, legacy

# Invalid requests raise the right exception classes.
errors = []
try:
    client.chat.completions.create(model="smollm2", messages=question, n=9)
except openai.BadRequestError as err:
    assert err.status_code == 400 and "n" in str(err), err
    errors.append(type(err).__name__)
else:
    raise AssertionError("n=9 was accepted")
try:
    client.chat.completions.create(model="no-such-model", messages=question)
except openai.NotFoundError as err:
    errors.append(type(err).__name__)
else:
    raise AssertionError("an unknown model was accepted")
try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).models.list()
except openai.AuthenticationError as err:
    errors.append(type(err).__name__)
else:
    raise AssertionError("a wrong API key was accepted")

print(json.dumps({
    "models": models,
    "answer": done.choices[0].message.content,
    "streamed": text,
    "finish_reasons": reasons,
    "usage": [done.usage.prompt_tokens, done.usage.completion_tokens, done.usage.total_tokens],
    "legacy": legacy.choices[0].text,
    "errors": errors,
}))
