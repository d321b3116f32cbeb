"""The official `anthropic` Python package against h2o-chat-server's Messages API, with the
real model: a plain message, the SDK's stream helper (its text equals the final message), a
forced tool call and its result sent back, count_tokens.

Usage: python3 anthropic_client.py BASE_URL API_KEY. Prints what it saw as one JSON line last.
"""
import json
import sys

import anthropic

base, key = sys.argv[1], sys.argv[2]
client = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0, timeout=180)
question = [{"role": "user", "content": "What is the capital of France?"}]

plain = client.messages.create(model="smollm2", max_tokens=40, temperature=0, messages=question)
assert plain.type == "message" and plain.role == "assistant", plain
assert "Paris" in plain.content[0].text, plain
assert plain.stop_reason in ("end_turn", "max_tokens"), plain
assert plain.usage.input_tokens > 0 and plain.usage.output_tokens > 0, plain.usage

with client.messages.stream(model="smollm2", max_tokens=40, temperature=0, messages=question) as stream:
    streamed = "".join(stream.text_stream)
    final = stream.get_final_message()
assert streamed == final.content[0].text == plain.content[0].text, (streamed, final, plain)
assert final.stop_reason == plain.stop_reason

stopped = client.messages.create(model="smollm2", max_tokens=40, temperature=0, messages=question,
                                 stop_sequences=["Paris"])
assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "Paris", stopped
assert "Paris" not in stopped.content[0].text, stopped

weather = {"name": "get_weather", "description": "The current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                            "required": ["city"]}}
asked = [{"role": "user", "content": "What is the weather in Paris?"}]
called = client.messages.create(model="smollm2", max_tokens=80, temperature=0, messages=asked,
                                tools=[weather], tool_choice={"type": "tool", "name": "get_weather"})
assert called.stop_reason == "tool_use", called
use = next(block for block in called.content if block.type == "tool_use")
assert use.name == "get_weather" and isinstance(use.input["city"], str), use

with client.messages.stream(model="smollm2", max_tokens=80, temperature=0, messages=asked,
                            tools=[weather], tool_choice={"type": "tool", "name": "get_weather"}) as stream:
    streamed_call = stream.get_final_message()
streamed_use = next(block for block in streamed_call.content if block.type == "tool_use")
assert streamed_use.input == use.input, (streamed_use, use)

answered = client.messages.create(
    model="smollm2", max_tokens=40, temperature=0, tools=[weather],
    messages=asked + [
        {"role": "assistant", "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18 degrees and sunny"}]},
    ],
    tool_choice={"type": "none"})
assert answered.content[0].type == "text" and answered.content[0].text, answered

counted = client.messages.count_tokens(model="smollm2", messages=question)
assert counted.input_tokens == plain.usage.input_tokens, (counted, plain.usage)

print(json.dumps({
    "answer": plain.content[0].text,
    "streamed": streamed,
    "tool_input": use.input,
    "after_result": answered.content[0].text,
    "input_tokens": counted.input_tokens,
}))
