"""What agent frameworks do with the official `openai` Python package, against the real model:
tool calls (required, named, auto, parallel) read with the SDK's own types, a streamed call
assembled by the SDK's stream helper, a tool result sent back, `parse()` with a pydantic
model, log-probabilities, and `n` seeded choices.

Usage: python3 openai_agents.py BASE_URL. Exits non-zero on any mismatch; prints what it saw
as one JSON line last, for the Rust test to check too.
"""
import json
import sys

import openai
from pydantic import BaseModel

base = sys.argv[1]
client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=180)

weather = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                   "required": ["city"], "additionalProperties": False},
    "strict": True}}
clock = {"type": "function", "function": {
    "name": "get_time", "description": "The current time in a time zone",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 40}},
                   "required": ["zone"], "additionalProperties": False}}}
question = [{"role": "user", "content": "What is the weather in Paris right now?"}]
greedy = {"model": "smollm2", "temperature": 0, "max_tokens": 80}

# Required: a call, content null, finish reason tool_calls, arguments a JSON string.
done = client.chat.completions.create(messages=question, tools=[weather, clock], tool_choice="required", **greedy)
choice = done.choices[0]
assert choice.finish_reason == "tool_calls", choice
assert choice.message.content is None, choice.message
call = choice.message.tool_calls[0]
assert call.type == "function" and call.id.startswith("call_"), call
assert call.function.name in ("get_weather", "get_time"), call
arguments = json.loads(call.function.arguments)
assert isinstance(arguments, dict), arguments

# Named: that tool, whatever the model would rather do.
named = client.chat.completions.create(
    messages=question, tools=[weather, clock],
    tool_choice={"type": "function", "function": {"name": "get_time"}}, **greedy)
named_call = named.choices[0].message.tool_calls[0]
assert named_call.function.name == "get_time", named_call
assert isinstance(json.loads(named_call.function.arguments)["zone"], str)

# The SDK's stream helper assembles the streamed call into the same call.
with client.chat.completions.stream(messages=question, tools=[weather, clock], tool_choice="required", **greedy) as stream:
    kinds = [event.type for event in stream]
    final = stream.get_final_completion()
streamed = final.choices[0].message.tool_calls[0]
assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments), (streamed, call)
assert "tool_calls.function.arguments.delta" in kinds, kinds
assert final.choices[0].finish_reason == "tool_calls"

# The result sent back: the model answers in words.
history = question + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": "18 degrees Celsius and sunny"},
]
answer = client.chat.completions.create(messages=history, tools=[weather, clock], tool_choice="none", **greedy)
assert answer.choices[0].message.content, answer
assert answer.choices[0].message.tool_calls is None, answer

# Auto: words or calls, each in its own shape.
auto = client.chat.completions.create(messages=question, tools=[weather], tool_choice="auto", **greedy)
auto_message = auto.choices[0].message
if auto_message.tool_calls:
    assert auto.choices[0].finish_reason in ("tool_calls", "length")
    json.loads(auto_message.tool_calls[0].function.arguments)
else:
    assert auto_message.content, auto

# Parallel calls allowed: every call complete and valid.
parallel = client.chat.completions.create(
    messages=[{"role": "user", "content": "Weather in Paris and in Rome?"}], tools=[weather],
    tool_choice="required", parallel_tool_calls=True, model="smollm2", temperature=0, max_tokens=200)
for parallel_call in parallel.choices[0].message.tool_calls:
    assert parallel_call.function.name == "get_weather"
    if parallel.choices[0].finish_reason == "tool_calls":
        assert isinstance(json.loads(parallel_call.function.arguments)["city"], str)


# parse() with a pydantic model returns that model.
class Capital(BaseModel):
    city: str
    country: str


parsed = client.chat.completions.parse(
    model="smollm2", temperature=0, max_tokens=80, response_format=Capital,
    messages=[{"role": "user", "content": "Name the capital of France and its country."}])
capital = parsed.choices[0].message.parsed
assert isinstance(capital, Capital), parsed

# Log-probabilities: greedy takes the likeliest token; the tokens are the answer.
probed = client.chat.completions.create(
    messages=[{"role": "user", "content": "What is the capital of France?"}],
    logprobs=True, top_logprobs=3, model="smollm2", temperature=0, max_tokens=12)
content = probed.choices[0].logprobs.content
assert "".join(t.token for t in content) == probed.choices[0].message.content
for token in content:
    assert len(token.top_logprobs) == 3
    assert token.logprob >= max(t.logprob for t in token.top_logprobs) - 1e-4, token
    assert bytes(token.bytes).decode("utf-8", "replace") == token.token

# n seeded choices: two, and the same two again.
def two():
    reply = client.chat.completions.create(
        messages=[{"role": "user", "content": "Tell me a fruit."}], n=2, seed=11,
        model="smollm2", temperature=1.0, max_tokens=12)
    assert len(reply.choices) == 2 and [c.index for c in reply.choices] == [0, 1], reply
    return [c.message.content for c in reply.choices]


first, again = two(), two()
assert first == again, (first, again)

print(json.dumps({
    "required": [call.function.name, call.function.arguments],
    "named": named_call.function.name,
    "streamed": [streamed.function.name, streamed.function.arguments],
    "answer": answer.choices[0].message.content,
    "auto": "calls" if auto_message.tool_calls else "text",
    "parallel": len(parallel.choices[0].message.tool_calls),
    "parsed": capital.model_dump(),
    "logprobs": len(content),
    "choices": first,
}))
