"""Anthropic's and OpenAI's official SDKs through the gateway's Messages and Responses doors:
plain and streamed answers relayed from an OpenAI-kind upstream, and the errors each SDK
reads as its own types — a wrong key (401), a request it cannot serve (400), an upstream's
429 with its Retry-After.

Usage: python3 sdk_doors.py GATEWAY_URL LIMITED_GATEWAY_URL KEY. Prints what it saw as one
JSON line last.
"""
import json
import sys

import anthropic
import openai

base, limited, key = sys.argv[1], sys.argv[2], sys.argv[3]
hi = [{"role": "user", "content": "Hi"}]

claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=60)
message = claude.messages.create(model="smollm2", max_tokens=20, messages=hi)
with claude.messages.stream(model="smollm2", max_tokens=20, messages=hi) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert message.content[0].text == streamed == final.content[0].text, (message, streamed, final)

gpt = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60)
response = gpt.responses.create(model="smollm2", input="Hi")
with gpt.responses.stream(model="smollm2", input="Hi") as stream:
    deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    final_response = stream.get_final_response()
assert response.output_text == deltas == final_response.output_text, (response, deltas)

errors = []
try:
    anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0).messages.create(
        model="smollm2", max_tokens=20, messages=hi)
except anthropic.AuthenticationError as err:
    errors.append(["anthropic", err.status_code])
try:
    openai.OpenAI(base_url=f"{base}/v1", api_key="wrong", max_retries=0).responses.create(model="smollm2", input="Hi")
except openai.AuthenticationError as err:
    errors.append(["openai", err.status_code])
try:
    claude.messages.create(model="smollm2", max_tokens=20, messages=[{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}])
except anthropic.BadRequestError as err:
    assert "image" in str(err), err
    errors.append(["anthropic", err.status_code])
try:
    gpt.responses.create(model="smollm2", input="Hi", store=True)
except openai.BadRequestError as err:
    assert "store" in str(err), err
    errors.append(["openai", err.status_code])
try:
    anthropic.Anthropic(base_url=limited, api_key=key, max_retries=0).messages.create(
        model="smollm2", max_tokens=20, messages=hi)
except anthropic.RateLimitError as err:
    assert err.response.headers.get("retry-after") == "7", err.response.headers
    errors.append(["anthropic", err.status_code])
try:
    openai.OpenAI(base_url=f"{limited}/v1", api_key=key, max_retries=0).responses.create(model="smollm2", input="Hi")
except openai.RateLimitError as err:
    assert err.response.headers.get("retry-after") == "7", err.response.headers
    errors.append(["openai", err.status_code])

print(json.dumps({"message": message.content[0].text, "response": response.output_text, "errors": errors}))
